"""The FineTuneJob API models as the operator defines them, generated from loraforge_operator by
`python -m loraforge_operator.crds`; do not edit. The trainer image carries no operator code: this copy is
how the trainer reads its configuration by the API's own definition (fields, limits, defaults, cross-field
rules and ``finetunejob.model.resolve``), and a unit test fails when it is stale."""

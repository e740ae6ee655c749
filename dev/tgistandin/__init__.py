"""A stand-in for text-generation-inference (TGI), for loraforge's tests and
local demo on machines without a GPU. Not a product component: the real TGI
is loraforge's serving runtime.

It speaks the parts of TGI's HTTP API that loraforge and its users rely on
(``/generate``, ``/generate_stream`` and ``/`` with ``parameters.adapter_id``,
``/v1/chat/completions`` with ``model`` naming the adapter, ``/health``,
``/info``, ``/metrics`` with TGI's metric names), takes TGI's launcher flags
and its ``LORA_ADAPTERS=name=/path,...`` variable, and runs the base model and
the peft adapters with transformers on the CPU, one request at a time. Unlike
TGI, which answers with the base model when ``adapter_id`` names no loaded
adapter, it rejects such a request (HTTP 422), so tests notice.

Like TGI's launcher it refuses to start when ``--max-input-tokens`` is not
below ``--max-total-tokens`` (TGI's ``ArgumentValidation`` line on stderr,
exit code 1), and it takes ``--usage-stats``/``USAGE_STATS`` (on, off,
no-stack; TGI reports usage statistics to Hugging Face unless it is off). The
stand-in sends nothing anywhere, whatever the level: it logs the level at
start and shows it as ``usage_stats`` in ``/info`` (a key TGI's ``/info``
lacks), so tests can check what a pod was started with.
"""

"""A local node for the local cluster: registers one Node and runs the pods
bound to it as local processes, for the demo and the end-to-end tests.

Development and test tooling only, never part of loraforge itself. kwok's
fake nodes make pods *look* Running; this node really runs them, on a machine
with no container runtime and no GPU:

- images are mapped to local commands (``images.py``): loraforge's trainer and
  operator from this checkout's virtualenv, TGI's image to the TGI stand-in
  (``dev/tgistandin``); an unknown image fails with ``StartError``;
- every container is a process with the pod's volumes at their mount paths
  (``sandbox.py``: a private mount namespace and a root made of the host's own
  file system; no isolation), its environment resolved as the kubelet does
  (``podenv.py``), and its own loopback address as the pod IP;
- the agent plays the kubelet's part (``pod.py``): Running, Ready from the
  readiness probe, liveness and startup probes, exit codes, termination
  messages, restarts per ``restartPolicy`` with back-off, graceful deletion
  (SIGTERM, grace period, SIGKILL), events;
- the Node (``local``, label ``loraforge.io/local-node=true``, taint
  ``loraforge.io/local-node=true:NoSchedule``, declared capacity with fake
  ``nvidia.com/gpu``) keeps its Lease renewed.

Run it with ``python -m localnode`` (``make cluster`` starts it with the
cluster). It needs root, or unprivileged user namespaces, for the mount
namespaces; it checks at start and says so.
"""

"""A real, local Kubernetes control plane for loraforge's tests and demo.

Development and test tooling only; nothing here ships in the operator or the
trainer. etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok
and helm are built from their Go modules (build.py), started as processes on
loopback with TLS (cluster.py), and given kwok nodes with fake
``nvidia.com/gpu`` capacity so the real scheduler places GPU workloads.
"""

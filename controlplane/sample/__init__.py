"""The sample target service: a small LangGraph-style deployment the control plane can watch and remediate.

`service` holds its state and metrics (callable without HTTP); `app` serves it: /metrics, /health,
/ready and the /admin API that the graph.* and storage.* actions call. Run it with
`controlplane sample-app --port 8001`.
"""

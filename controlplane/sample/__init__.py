"""The sample target service: a small LangGraph-style deployment the control plane can watch and remediate.

`service` holds its state and metrics (callable without HTTP), with its LLM side (models, tools, run
queue, tokens and cost, canaries) in `llm` and its service levels and degradable features in
`degradation`; `bodies` and `errors` are the admin API's request bodies and refusals; `app` serves
it: /metrics, /health, /ready and the /admin API that the graph.*, storage.*, llm and service.*
actions call. Run it with `controlplane sample-app --port 8001`.
"""

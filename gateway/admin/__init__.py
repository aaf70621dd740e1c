"""The admin side of the gateway: the Starlette app on ``[admin]`` (``api``), its dashboard
(``static/``), the Prometheus exposition (``metrics``) and what they show (``state``)."""

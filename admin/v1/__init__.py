"""
The /v1 API (DESIGN §7.2, seed 003): MaxScale's REST API conventions over
this balancer's objects, as JSON:API documents.

L{admin.v1.api.V1App} holds the routes and the request pipeline (method
override, access, preconditions, locks, rendering); one module per resource
type says what its documents hold and which changes it makes through
L{balancer.control.IControl}.
"""

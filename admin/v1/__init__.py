"""
The /v1 API (docs/DESIGN.md §7.2): MaxScale's REST API conventions (as its
REST API documentation gives them) over this balancer's objects, as JSON:API
documents.

L{admin.v1.api.V1App} holds the routes and the request pipeline (method
override, access, preconditions, locks, rendering); one module per resource
type says what its documents hold and which changes it makes through
L{balancer.control.interface.IControl}.
"""

"""The request path, one module per stage, in the order a request meets them.

====================  ================================  =========================================
stage                 module                            what it decides
====================  ================================  =========================================
edge                  :mod:`proxy.stages.edge`          peer, trust, request and trace ids, client
                                                        address; a credential sent twice is 400
canonicalise          :mod:`proxy.stages.canonicalise`  the one path and host every later stage
                                                        and the upstream see (400 otherwise)
own endpoints         :mod:`proxy.stages.local`         login, callback, logout, JWKS, access
route                 :mod:`proxy.stages.route`         which route (404 otherwise)
authenticate          :mod:`proxy.stages.authenticate`  who is calling (401/503)
authorise             :mod:`proxy.stages.authorise`     the policy's decision (403, or a login)
rate limit            :mod:`proxy.stages.ratelimit`     the route's budget for this caller (429)
upstream credentials  :mod:`proxy.stages.credentials`   the backend's short-lived credential (503)
forward               :mod:`proxy.stages.forward`       the upstream's answer (502/504)
decide                :mod:`proxy.stages.decide`        decision mode: the data plane's answer
audit                 :mod:`proxy.stages.audit`         the request's one record and its metrics
====================  ================================  =========================================

Every stage reads and writes one :class:`~proxy.stages.context.RequestContext`;
:class:`proxy.gateway.Gateway` only sequences them and turns a stage's
:class:`~proxy.errors.GatehouseError` into its answer.
"""

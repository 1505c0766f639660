"""Server behaviours that deviate from the protocol: a malicious server's plug-ins.

One module per behaviour, each a :class:`splitpriv.servers.ServerBehaviour` registered with
:func:`splitpriv.servers.register_server`; :func:`splitpriv.servers.build_server` imports every
module here and builds one from a spec ``NAME[:key=value,...]``.

Registered: ``scaled`` (returns ``factor`` times the honest cut gradient).
"""

"""Twisted plugin that makes ``twistd chatbx`` run the chatbx XMPP server.

It only names its module: importing it must stay cheap because Twisted
imports every plugin whenever ``twistd`` lists or looks up a plugin. This
directory has no ``__init__.py`` on purpose (Twisted scans ``twisted/plugins``
directories on ``sys.path``).
"""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(
    "chatbx", "chatbx_server.tap", "A federated XMPP server", "chatbx"
)

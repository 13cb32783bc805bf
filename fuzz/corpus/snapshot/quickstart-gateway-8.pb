
default/quickstart/
(gateway/default/quickstart/listener/http?
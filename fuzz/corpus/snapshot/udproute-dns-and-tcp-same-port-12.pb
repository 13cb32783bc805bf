

default/gwŠ
#gateway/default/gw/listener/dns-udp5J_
udproute/default/dns/rule/0@
service/default/dns/port/53service/default/dns/port/53/udp†
#gateway/default/gw/listener/dns-tcp5B[
tcproute/default/dns/rule/0<
service/default/dns/port/53service/default/dns/port/53t
%gateway/default/gw/listener/other-udpé)JF
udproute/default/no-udp/rule/0$
service/default/web/port/80"ô"2
service/default/dns/port/53

10.244.0.9é)"6
service/default/dns/port/53/udp

10.244.0.9é)
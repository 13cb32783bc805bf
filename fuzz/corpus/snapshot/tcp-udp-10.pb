

default/l4ä
gateway/default/l4/listener/tcp®FBb
 tcproute/default/echo-tcp/rule/0>
service/default/echo/port/80service/default/echo/port/80é
gateway/default/l4/listener/udp¥)Jf
 udproute/default/echo-udp/rule/0B
service/default/echo/port/53 service/default/echo/port/53/udp"6
 service/default/echo/port/53/udp
	127.0.0.1éG"2
service/default/echo/port/80
	127.0.0.1çG

store/gw›
gateway/store/gw/listener/httpP:õ
'httproute/store/shadowed/rule/0/match/0
	/checkout"%*#
service/store/shadow/port/80Ë*8
service/store/web/port/80service/store/web/port/80:ò
'httproute/store/shadowed/rule/1/match/0
/browse"$*"
service/store/shadow/port/80d*8
service/store/web/port/80service/store/web/port/80"4
service/store/shadow/port/80
10.244.0.63ê?"E
service/store/web/port/80
10.244.0.31ê?
10.244.0.32ê?
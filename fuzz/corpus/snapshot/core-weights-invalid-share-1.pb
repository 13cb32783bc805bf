

default/gw„
 gateway/default/gw/listener/httpP:Û
&httproute/default/split/rule/0/match/0
/*<
service/default/web/port/80service/default/web/port/80*(
service/default/missing/port/80"ô*@
service/default/canary/port/80service/default/canary/port/80"5
service/default/canary/port/80

10.244.1.1?"2
service/default/web/port/80

10.244.0.5?
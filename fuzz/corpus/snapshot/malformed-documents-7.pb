

default/gw“
 gateway/default/gw/listener/httpP:k
"httproute/default/r/rule/0/match/0
/*<
service/default/web/port/80service/default/web/port/80"2
service/default/web/port/80

10.244.0.5?


default/gwæ
 gateway/default/gw/listener/httpP:½
"httproute/default/r/rule/0/match/0Y
/apix-envprod	x-version^v[12]$debug1id^[0-9]+$"POST*<
service/default/web/port/80service/default/web/port/80"2
service/default/web/port/80

10.244.0.5?
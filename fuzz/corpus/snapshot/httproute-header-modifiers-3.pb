

default/gwÛ
 gateway/default/gw/listener/httpP:²
"httproute/default/r/rule/0/match/0
/"(
&

x-setone
x-addtwox-remove"

x-respthreeserver*<
service/default/web/port/80service/default/web/port/80"2
service/default/web/port/80

10.244.0.5?
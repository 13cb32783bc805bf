
default/quickstartÏ
(gateway/default/quickstart/listener/http?:
%httproute/default/echo/rule/0/match/0echo.example.com
/"

x-served-bysluice*>
service/default/echo/port/80service/default/echo/port/80"2
service/default/echo/port/80
	127.0.0.1©F
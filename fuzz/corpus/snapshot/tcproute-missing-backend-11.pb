

default/gwl
gateway/default/gw/listener/tcp¨FBD
tcproute/default/t/rule/0'
service/default/nope/port/9000"ô
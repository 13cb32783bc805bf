
store/gwê
gateway/store/gw/listener/httpP:j
*httproute/store/conflicting/rule/0/match/0
/x"other.example.com(Æ""
internal.example.com
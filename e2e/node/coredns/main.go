// Command coredns is CoreDNS with only the plugins the local cluster's DNS uses (the upstream binary
// links ~50 plugins and their cloud SDKs). The plugin chain's order is CoreDNS's own (dnsserver.Directives).
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }

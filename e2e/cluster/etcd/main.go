// Command etcd is the etcd server (go.etcd.io/etcd/server/v3), as built by etcd's own main package.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

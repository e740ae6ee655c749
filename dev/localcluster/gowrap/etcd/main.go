// Command etcd builds the etcd server from its Go module.
//
// go.etcd.io/etcd/server/v3 cannot be `go install`ed at a release tag because
// its go.mod replaces its sibling modules with relative paths; this wrapper
// imports the server's entry point, and build.py pins the siblings to the
// same release.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}

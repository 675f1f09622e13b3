// Command kubenode is a multi-call binary: kubelet and kube-proxy from k8s.io/kubernetes,
// selected by the basename of argv[0] (symlinks) or by the first argument
// (`kubenode kubelet --flags...`). One binary links the shared packages once.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var commands = map[string]func() *cobra.Command{
	"kubelet":    func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"kube-proxy": proxy.NewProxyCommand,
}

func main() {
	name := filepath.Base(os.Args[0])
	if commands[name] == nil && len(os.Args) > 1 {
		name = os.Args[1]
		os.Args = append([]string{name}, os.Args[2:]...)
	}
	newCmd := commands[name]
	if newCmd == nil {
		fmt.Fprintf(os.Stderr, "usage: kubenode {kubelet|kube-proxy} [args...]\n")
		os.Exit(2)
	}
	os.Exit(cli.Run(newCmd()))
}

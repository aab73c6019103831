// pause: the pod sandbox's process, built here because there is no registry to pull one from.
// It waits for SIGINT or SIGTERM and reaps nothing: containerd runs each container in its own PID namespace.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
}

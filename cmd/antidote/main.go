// Command antidote is Antidote's command-line tool.
//
//	antidote devkafka --addr 127.0.0.1:9092 --partitions 4
//	antidote dlq list|group|show|replay|purge --topic orders
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "antidote:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "antidote",
		Short:         "Tools for Antidote, the poison-pill cure for Watermill services",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newDevKafkaCmd(), newDLQCmd())
	return root
}

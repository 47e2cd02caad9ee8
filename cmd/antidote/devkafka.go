package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/antidote-mq/antidote/devkafka"
)

func newDevKafkaCmd() *cobra.Command {
	var addr string
	var partitions int
	cmd := &cobra.Command{
		Use:   "devkafka",
		Short: "Run a standalone embedded Kafka-protocol broker until interrupted",
		Long: `Runs an in-memory Kafka-protocol broker (franz-go's kfake) that creates
topics on first use. For local development, and for tests in which a consumer
process must die while the broker lives on. Point clients at it with
ANTIDOTE_KAFKA_BROKERS=<addr>. Its data is gone when it stops.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if partitions < 1 {
				return fmt.Errorf("--partitions %d: use 1 or more", partitions)
			}
			k, err := devkafka.Start(devkafka.Config{Addr: addr, Partitions: partitions})
			if err != nil {
				return err
			}
			defer k.Close()
			// One parseable line, so scripts can wait for it.
			fmt.Fprintf(cmd.OutOrStdout(), "devkafka listening on %s (partitions %d)\n", strings.Join(k.Addrs(), ","), partitions)
			<-cmd.Context().Done()
			fmt.Fprintln(cmd.OutOrStdout(), "devkafka stopping")
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:9092", "listen address (host:port; port 0 picks a free one)")
	cmd.Flags().IntVar(&partitions, "partitions", 4, "partitions of auto-created topics")
	return cmd
}

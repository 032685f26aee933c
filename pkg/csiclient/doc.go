// Package csiclient is `plinth volume` and `plinth snapshot`: a small CSI
// Controller client for people who run plinth standalone without
// Kubernetes (Nomad, Docker Swarm, operators). Client speaks CSI over a
// unix socket and returns plinth's own stable Volume and Snapshot values;
// Main parses a command line, runs it and prints a table or JSON.
package csiclient

// Command plinth is plinth's one binary, with a subcommand per role:
// standalone, node and controller, and a CSI client for standalone's
// socket (volume, snapshot: pkg/csiclient). It only parses flags into
// pkg/app's configuration and runs it, or hands the client its command
// line; all logic lives in pkg/.
package main

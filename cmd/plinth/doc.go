// Command plinth is plinth's one binary, with a subcommand per role:
// standalone, node and controller. It only parses flags into pkg/app's
// configuration and runs it; all logic lives in pkg/.
package main

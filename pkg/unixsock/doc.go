// Package unixsock listens on unix sockets without stepping on another
// process's socket: a socket file that a live server answers on is never
// replaced (only one nobody answers on is stale), and closing a listener
// removes its socket file only while that path is still the socket this
// listener created.
package unixsock

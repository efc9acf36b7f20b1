#include <mosquitto.h>
#include <mqtt_protocol.h>
/* The simulator drives libmosquitto's external-loop API (mosquitto_socket, mosquitto_loop_read/write/misc)
 * from its own epoll loop; Glibc's Swift module does not export <sys/epoll.h>, so it comes in here. */
#include <sys/epoll.h>

/*
 * agent_probe: tries to reach the myvm agent the way a process in a container would, and prints
 * what happened, one line per target. Built static by tests/tests/agent_guard.rs and run inside
 * a container (busybox has no vsock client).
 *
 *   agent_probe CID:PORT... | unix:PATH... | unix-stdio:PATH...
 *
 * Port 1026 (stdio) and unix-stdio: are spoken to with a stdio header (`STDIO probe - stdout`);
 * any other port, and unix:, with a ttrpc Check call of the agent API. Output per target:
 *
 *   <target> connect=ok|<errno name> [check=SERVING|check=EOF|check=answer:<hex>]
 *                                    [stdio=<reply line>|stdio=EOF]
 *
 * `check=SERVING` (the agent answered the call) and `stdio=OK` or `stdio=ERR_…` (the agent
 * answered the header) mean the agent was reached.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define TIMEOUT_MS 3000

static const char *errname(int e)
{
	switch (e) {
	case ECONNREFUSED: return "ECONNREFUSED";
	case ECONNRESET: return "ECONNRESET";
	case ETIMEDOUT: return "ETIMEDOUT";
	case ENODEV: return "ENODEV";
	case EHOSTUNREACH: return "EHOSTUNREACH";
	case ENETUNREACH: return "ENETUNREACH";
	case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case EPERM: return "EPERM";
	case EACCES: return "EACCES";
	case EINVAL: return "EINVAL";
	case ENOENT: return "ENOENT";
	case ENOSYS: return "ENOSYS";
	default: return NULL;
	}
}

static void print_err(const char *what, int e)
{
	const char *n = errname(e);
	if (n)
		printf(" %s=%s", what, n);
	else
		printf(" %s=errno%d", what, e);
}

/* Connects with a timeout; returns the fd or -1 (errno set). */
static int connect_to(int domain, const struct sockaddr *sa, socklen_t len)
{
	int fd = socket(domain, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	int flags = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, flags | O_NONBLOCK);
	if (connect(fd, sa, len) < 0) {
		if (errno != EINPROGRESS) {
			int e = errno;
			close(fd);
			errno = e;
			return -1;
		}
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		int r = poll(&p, 1, TIMEOUT_MS);
		if (r <= 0) {
			close(fd);
			errno = ETIMEDOUT;
			return -1;
		}
		int err = 0;
		socklen_t l = sizeof(err);
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
		if (err) {
			close(fd);
			errno = err;
			return -1;
		}
	}
	fcntl(fd, F_SETFL, flags);
	struct timeval tv = { .tv_sec = TIMEOUT_MS / 1000 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Reads exactly n bytes; returns n, 0 on EOF before that, -1 on error. */
static ssize_t read_full(int fd, uint8_t *buf, size_t n)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, buf + got, n - got);
		if (r == 0)
			return 0;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

/* A ttrpc request for /myvm.agent.v1.Agent/Check; prints what came back. */
static void ttrpc_check(int fd)
{
	static const char service[] = "myvm.agent.v1.Agent";
	static const char method[] = "Check";
	uint8_t msg[128];
	size_t n = 10;
	/* Request { service = 1; method = 2; payload = 3 (CheckRequest{}, empty) } */
	msg[n++] = 0x0a;
	msg[n++] = sizeof(service) - 1;
	memcpy(msg + n, service, sizeof(service) - 1);
	n += sizeof(service) - 1;
	msg[n++] = 0x12;
	msg[n++] = sizeof(method) - 1;
	memcpy(msg + n, method, sizeof(method) - 1);
	n += sizeof(method) - 1;
	msg[n++] = 0x1a;
	msg[n++] = 0;
	/* Header: payload length, stream id 1, type 1 (request), flags 0. */
	put_be32(msg, (uint32_t)(n - 10));
	put_be32(msg + 4, 1);
	msg[8] = 1;
	msg[9] = 0;
	if (write(fd, msg, n) != (ssize_t)n) {
		print_err("check", errno);
		return;
	}
	uint8_t hdr[10];
	ssize_t r = read_full(fd, hdr, sizeof(hdr));
	if (r <= 0) {
		if (r == 0 || errno == ECONNRESET)
			printf(" check=EOF");
		else
			print_err("check", errno);
		return;
	}
	uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
	if (hdr[8] != 2 || len > 4096) {
		printf(" check=bad-header");
		return;
	}
	uint8_t body[4096];
	if (read_full(fd, body, len) != (ssize_t)len) {
		printf(" check=EOF");
		return;
	}
	/* Response { payload = 2: CheckResponse { status = 1: SERVING (1) } } */
	for (uint32_t i = 0; i + 3 < len; i++) {
		if (body[i] == 0x12 && body[i + 1] == 0x02 && body[i + 2] == 0x08 && body[i + 3] == 0x01) {
			printf(" check=SERVING");
			return;
		}
	}
	printf(" check=answer:");
	for (uint32_t i = 0; i < len && i < 64; i++)
		printf("%02x", body[i]);
}

/* A stdio stream request; prints the agent's reply line. */
static void stdio_header(int fd)
{
	static const char req[] = "STDIO probe - stdout\n";
	if (write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1)) {
		print_err("stdio", errno);
		return;
	}
	char line[256];
	size_t n = 0;
	while (n < sizeof(line) - 1) {
		ssize_t r = read(fd, line + n, 1);
		if (r <= 0 || line[n] == '\n')
			break;
		n++;
	}
	line[n] = 0;
	for (size_t i = 0; i < n; i++)
		if (line[i] == ' ')
			line[i] = '_';
	printf(" stdio=%s", n ? line : "EOF");
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2) {
		fprintf(stderr, "usage: %s CID:PORT... | unix:PATH... | unix-stdio:PATH...\n", argv[0]);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		const char *t = argv[i];
		int fd;
		int stdio = 0;
		printf("%s", t);
		if (strncmp(t, "unix:", 5) == 0 || strncmp(t, "unix-stdio:", 11) == 0) {
			struct sockaddr_un sa = { .sun_family = AF_UNIX };
			stdio = t[4] == '-';
			strncpy(sa.sun_path, strchr(t, ':') + 1, sizeof(sa.sun_path) - 1);
			fd = connect_to(AF_UNIX, (struct sockaddr *)&sa, sizeof(sa));
		} else {
			unsigned long cid, port;
			if (sscanf(t, "%lu:%lu", &cid, &port) != 2) {
				printf(" bad-target\n");
				continue;
			}
			struct sockaddr_vm sa = {
				.svm_family = AF_VSOCK,
				.svm_cid = (unsigned int)cid,
				.svm_port = (unsigned int)port,
			};
			stdio = port == 1026;
			fd = connect_to(AF_VSOCK, (struct sockaddr *)&sa, sizeof(sa));
		}
		if (fd < 0) {
			print_err("connect", errno);
			printf("\n");
			continue;
		}
		printf(" connect=ok");
		if (stdio)
			stdio_header(fd);
		else
			ttrpc_check(fd);
		printf("\n");
		close(fd);
	}
	return 0;
}

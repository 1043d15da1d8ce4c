/*
 * How long a virtio-blk device takes to copy a boot's worth of 4 KiB reads out of a disk image,
 * the two ways hearth-vmm has done it: lseek + read(2) per 4 KiB buffer (the kernel's
 * copy_to_user), and 8-byte loads and stores from a read-only mapping of the image
 * (hearth_vmm::file_map, used for read-only disks). Under QEMU's TCG, which runs the
 * emulated-SVM harness, copy_to_user's `rep movsb` costs one emulated step per byte
 * (BENCHMARKS.md, "Copies from mappings").
 *
 *   gcc -O2 -static -o /tmp/disk-read-copy harness/probes/disk-read-copy.c
 *   harness/run-in-svm.sh --file "$HEARTH_ROOTFS" --bin /tmp/disk-read-copy -- \
 *       sh -c "cat $HEARTH_ROOTFS >/dev/null; /tmp/disk-read-copy $HEARTH_ROOTFS"
 *
 * The image must be at least 64 MiB (the probe reads from its first 64 MiB, page cache warm).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PIECE 4096UL
#define TOTAL (5UL << 20) /* a boot reads ~4.9 MB from the root filesystem */
#define SPAN (64UL << 20)

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void copy_words(char *dst, const char *src, size_t n)
{
	volatile uint64_t *d = (volatile uint64_t *)dst;
	const uint64_t *s = (const uint64_t *)src;
	for (size_t i = 0; i < n / 8; i++)
		d[i] = s[i];
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	char *dst = mmap(0, SPAN / 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	const char *map = mmap(0, SPAN, PROT_READ, MAP_SHARED, fd, 0);
	if (fd < 0 || dst == MAP_FAILED || map == MAP_FAILED) {
		perror(argv[1]);
		return 1;
	}
	for (int round = 0; round < 4; round++) {
		size_t base = (size_t)round * (SPAN / 8);
		double t0 = now_ms();
		for (size_t off = 0; off < TOTAL; off += PIECE) {
			char *to = dst + ((off * 7) % (SPAN / 2) & ~(PIECE - 1));
			if (lseek(fd, base + off, SEEK_SET) < 0 || read(fd, to, PIECE) != (ssize_t)PIECE) {
				perror("read");
				return 1;
			}
		}
		double t1 = now_ms();
		for (size_t off = 0; off < TOTAL; off += PIECE)
			copy_words(dst + ((off * 7) % (SPAN / 2) & ~(PIECE - 1)), map + (base + SPAN / 2 + off) % SPAN, PIECE);
		double t2 = now_ms();
		printf("round %d: %lu x 4 KiB: lseek+read %.1f ms, copy from the mapping %.1f ms\n", round, TOTAL / PIECE,
		       t1 - t0, t2 - t1);
	}
	return 0;
}

/*
 * vmm.c: a minimal KVM VMM (raw ioctls, no QEMU) that replays a page access stream in a guest.
 *
 * Why: memsim's calibration compares the simulator with what a real host kernel does to a real
 * KVM guest touching a known stream of pages. The stream is generated in Python
 * (sim/calibrate/streams.py) and piped in on stdin; this program only replays it, so the Python
 * side knows every access exactly.
 *
 * Stream: little-endian uint32 entries on stdin, one per access: bits 0..30 are the data page
 * number, bit 31 set means write. Access i (counted from 1) to page p touches the 8-byte word
 * at byte (p & 63) * 64 of page p (spreading words over cache sets): a write stores i, a read
 * adds the word to read_sum. At the end the VMM checksums data memory as the sum over pages of
 * word(p) * (2p + 1) mod 2^64; streams.py predicts accesses, read_sum and checksum.
 *
 * Guest (default mode): one vCPU, G MiB of RAM in one anonymous private mmap (MADV_NOHUGEPAGE,
 * so the host backs it with 4 KiB pages) registered as memslot 0. The first 2 MiB of guest
 * physical memory holds the GDT/TSS, IDT, page tables (identity map, 2 MiB guest pages), code,
 * a control block, the stream buffer and a stack; data page p is at 2 MiB + p * 4 KiB. The vCPU
 * starts in 64-bit mode at CPL 3, so the access loop runs in user mode (native even where KVM
 * shadows page tables and emulates guest supervisor code). It reports each chunk by a 4-byte
 * store to a page with no memslot behind it (KVM_EXIT_MMIO), which needs no privilege change:
 * under KVM's paravirtual (PVM) build, OUT from CPL 3 raises #GP even with IOPL 3, SYSCALL
 * does not reach CPL 0 through LSTAR and INT n raises #UD (PVM guests enter their kernel
 * through PVM's own MSRs), while an MMIO store works on PVM and on VMX/SVM alike. Exceptions
 * go to CPL-0 stubs that report the vector with OUT (KVM_EXIT_IO).
 * The loop (access_chunk, below) is the same machine code in the guest and in --plain mode,
 * which runs the stream over an mmap of the same size in this process (no KVM), to separate
 * the host's own LRU from the MMU notifier path.
 *
 * Output: one JSON object on stdout: counts, times, getrusage faults, the changed counters of
 * /proc/vmstat (system-wide) and of this process's memory cgroup's memory.stat read just
 * before and after the access loop (before the checksum, which reads every page), and KVM's
 * binary stats (KVM_GET_STATS_FD) where the kernel has them, and "phases": the same time,
 * faults and counters per phase of the stream.
 *
 * Phases: a calibration run is a sequence of phases (say a pass writing every page, then the
 * measured accesses), whose counters must not blur into each other. Each --phase-at N (at most
 * MAX_BOUNDS, strictly increasing) ends a phase after access N: no chunk crosses N, and once
 * the chunk ending there is done (in KVM mode: reported by the guest, before the next chunk is
 * fed) the VMM snapshots the time, getrusage and the kernel's counters. The end of the stream
 * ends the last phase; without --phase-at the one phase is the whole run.
 *
 * Errors: one line on stderr, exit status 1 (2 for usage).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* Guest physical layout (all below DATA_GPA, mapped by the first 2 MiB page). */
#define GDT_GPA 0x1000ULL
#define TSS_GPA 0x1800ULL
#define IDT_GPA 0x2000ULL
#define PML4_GPA 0x3000ULL
#define PDPT_GPA 0x4000ULL
#define PD_GPA 0x5000ULL /* PDs follow, one per GiB */
#define PT_END 0x80000ULL
#define CODE_GPA 0x80000ULL
#define CTL_GPA 0x90000ULL
#define BUF_GPA 0x100000ULL
#define BUF_END 0x1e0000ULL
#define STACK_TOP 0x1ff000ULL
#define DATA_GPA 0x200000ULL
#define MAX_MEM_MIB (64ULL << 10)
#define MAX_CHUNK ((BUF_END - BUF_GPA) / 4)

/* Control block fields (byte offsets from CTL_GPA), shared with the guest code below. */
#define CTL_N 0x00
#define CTL_BASE 0x08
#define CTL_BUF 0x10
#define CTL_STATE 0x18 /* struct loop_state */

#define CTL_MMIO 0x28 /* guest virtual (= physical) address of the report register */

/* Reports: a 4-byte write to the MMIO page (no memslot: KVM_EXIT_MMIO). */
#define REPORT_CHUNK 1 /* chunk done (or first call): hand me the next one */
#define REPORT_DONE 2  /* the VMM handed n = 0: finished */
#define PORT_EXC 0xe2  /* CPL-0 exception stubs: OUT of the vector number */

#define STR_(x) #x
#define STR(x) STR_(x)

struct loop_state {
	uint64_t index;    /* accesses done */
	uint64_t read_sum; /* sum of the words read */
};

void access_chunk(uint8_t *base, const uint32_t *entries, uint64_t n, struct loop_state *st);
extern const uint8_t guest_blob_start[], guest_blob_end[], guest_entry[], guest_exc_stubs[];

/*
 * access_chunk(base=rdi, entries=rsi, n=rdx, state=rcx): the access loop, SysV ABI, position
 * independent. guest_entry asks the VMM for a chunk (REPORT_CHUNK), calls access_chunk, and
 * repeats until the VMM hands it n = 0. guest_exc_stubs: 32 CPL-0 stubs of 16 bytes, stub v
 * reports vector v on PORT_EXC and halts.
 */
__asm__(
	".text\n"
	".globl guest_blob_start, guest_blob_end, guest_entry, guest_exc_stubs\n"
	".globl access_chunk\n"
	".p2align 6\n"
	"guest_blob_start:\n"
	"access_chunk:\n"
	"	test %rdx, %rdx\n"
	"	jz 4f\n"
	"	push %rcx\n"
	"	mov (%rcx), %r8\n"
	"	mov 8(%rcx), %r10\n"
	"	lea (%rsi,%rdx,4), %r11\n"
	"	.p2align 4\n"
	"1:	mov (%rsi), %eax\n"
	"	add $4, %rsi\n"
	"	inc %r8\n"
	"	mov %eax, %edx\n"
	"	and $0x7fffffff, %edx\n"
	"	shl $12, %rdx\n"
	"	mov %rdx, %rcx\n"
	"	shr $6, %rcx\n"
	"	and $0xfc0, %ecx\n"
	"	add %rcx, %rdx\n"
	"	add %rdi, %rdx\n"
	"	test %eax, %eax\n"
	"	js 2f\n"
	"	add (%rdx), %r10\n"
	"	cmp %r11, %rsi\n"
	"	jb 1b\n"
	"	jmp 3f\n"
	"2:	mov %r8, (%rdx)\n"
	"	cmp %r11, %rsi\n"
	"	jb 1b\n"
	"3:	pop %rcx\n"
	"	mov %r8, (%rcx)\n"
	"	mov %r10, 8(%rcx)\n"
	"4:	ret\n"
	".p2align 4\n"
	"guest_entry:\n"
	"	mov $" STR(CTL_GPA) ", %ebx\n"
	"	mov " STR(CTL_MMIO) "(%rbx), %r12\n"
	"5:	movl $" STR(REPORT_CHUNK) ", (%r12)\n"
	"	mov " STR(CTL_N) "(%rbx), %rdx\n"
	"	test %rdx, %rdx\n"
	"	jz 6f\n"
	"	mov " STR(CTL_BASE) "(%rbx), %rdi\n"
	"	mov " STR(CTL_BUF) "(%rbx), %rsi\n"
	"	lea " STR(CTL_STATE) "(%rbx), %rcx\n"
	"	call access_chunk\n"
	"	jmp 5b\n"
	"6:	movl $" STR(REPORT_DONE) ", (%r12)\n"
	"	jmp 6b\n"
	".p2align 4\n"
	".p2align 4\n"
	"guest_exc_stubs:\n"
	"	.irp v,0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31\n"
	"	.p2align 4\n"
	"	mov $\\v, %eax\n"
	"	out %al, $" STR(PORT_EXC) "\n"
	"	hlt\n"
	"	.endr\n"
	"guest_blob_end:\n");

static void die(const char *fmt, ...)
{
	va_list ap;
	fputs("vmm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* ---- the kernel's counters around the access loop ---- */

#define MAX_KV 512

struct kv {
	char name[64];
	int64_t v;
};

struct kvs {
	struct kv e[MAX_KV];
	int n; /* -1: not readable */
};

/* Read "name value" lines (/proc/vmstat, memory.stat); n = -1 if the file cannot be read. */
static void read_kvs(const char *path, struct kvs *out)
{
	out->n = -1;
	if (!path[0])
		return;
	FILE *f = fopen(path, "re");
	if (!f)
		return;
	out->n = 0;
	char line[256];
	while (out->n < MAX_KV && fgets(line, sizeof(line), f)) {
		struct kv *e = &out->e[out->n];
		long long v;
		if (sscanf(line, "%63s %lld", e->name, &v) == 2) {
			e->v = (int64_t)v;
			out->n++;
		}
	}
	fclose(f);
}

/* The memory.stat of this process's memory cgroup (v1 hierarchy first, then v2). */
static void memcg_stat_path(char *out, size_t size, char *cg, size_t cg_size)
{
	out[0] = cg[0] = 0;
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return;
	char line[512], v2[512] = "";
	while (fgets(line, sizeof(line), f)) {
		line[strcspn(line, "\n")] = 0;
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c2 = 0;
		if (!strcmp(c1 + 1, "memory")) {
			snprintf(cg, cg_size, "%s", c2 + 1);
			snprintf(out, size, "/sys/fs/cgroup/memory%s/memory.stat", c2 + 1);
			fclose(f);
			return;
		}
		if (c1 == line + 1 && line[0] == '0' && c1[1] == 0)
			snprintf(v2, sizeof(v2), "%s", c2 + 1);
	}
	fclose(f);
	if (v2[0]) {
		snprintf(cg, cg_size, "%s", v2);
		snprintf(out, size, "/sys/fs/cgroup%s/memory.stat", v2);
	}
}

/* Member "name": {counter: after - before, ...} of the counters that changed, or null;
 * indented by ind spaces. */
static void print_delta(FILE *out, int ind, const char *name, const struct kvs *a,
			const struct kvs *b)
{
	if (a->n < 0 || b->n < 0) {
		fprintf(out, ",\n%*s\"%s\": null", ind, "", name);
		return;
	}
	fprintf(out, ",\n%*s\"%s\": {", ind, "", name);
	int first = 1;
	for (int i = 0; i < b->n; i++)
		for (int j = 0; j < a->n; j++)
			if (!strcmp(a->e[j].name, b->e[i].name)) {
				if (b->e[i].v != a->e[j].v) {
					fprintf(out, "%s\n%*s\"%s\": %" PRId64, first ? "" : ",",
						ind + 2, "", b->e[i].name, b->e[i].v - a->e[j].v);
					first = 0;
				}
				break;
			}
	fprintf(out, "\n%*s}", ind, "");
}

/* ---- phases ---- */

#define MAX_BOUNDS 15 /* --phase-at values; one more phase than boundaries */

/*
 * The state at one phase boundary (and before and after the access loop). A snapshot both
 * ends the phase before it and begins the one after; reading the counters takes tens of
 * microseconds and faults in stdio's buffer, so a phase's time and faults count from after
 * the reads (t_begin, ru_begin) to before the next snapshot's (t_end, ru_end).
 */
struct snap {
	uint64_t accesses, loop_ns; /* the run's totals at the boundary */
	uint64_t t_end, t_begin;
	struct rusage ru_end, ru_begin;
	struct kvs vm, cg;
};

/* The loop's start, each boundary, its end: static (bounded), faulted in before the loop. */
static struct snap snaps[MAX_BOUNDS + 2];

struct opts {
	int plain;
	int checksum;
	int chunk_times;
	int kvm_stats;
	int kernel_stats;
	int populate;
	uint64_t mem_mib;
	uint64_t chunk;
	uint64_t bounds[MAX_BOUNDS]; /* --phase-at: strictly increasing access counts */
	int n_bounds;
};

struct run {
	uint8_t *mem;
	uint64_t mem_bytes;
	uint64_t data_pages;
	uint64_t accesses, chunks, exits;
	uint64_t loop_ns, feed_ns;
	uint64_t *chunk_ns; /* per chunk: ns in the loop (or KVM_RUN), if --chunk-times */
	uint64_t chunk_cap;
	uint64_t read_sum;
	uint64_t mmio_gpa;
	int stream_fd;
	const struct opts *o;
	const char *cg_path; /* memory.stat of this process's cgroup, "" if unknown */
	int next_bound;	     /* index in o->bounds of the next boundary to reach */
	int n_snaps;
};

/* End the current phase: the time, faults and kernel counters at this point. */
static void phase_end(struct run *r)
{
	struct snap *s = &snaps[r->n_snaps++];
	s->t_end = now_ns();
	getrusage(RUSAGE_SELF, &s->ru_end);
	s->accesses = r->accesses;
	s->loop_ns = r->loop_ns;
	if (r->o->kernel_stats) {
		read_kvs("/proc/vmstat", &s->vm);
		read_kvs(r->cg_path, &s->cg);
	}
}

/* Begin the next phase, after phase_end's reads. */
static void phase_begin(struct run *r)
{
	struct snap *s = &snaps[r->n_snaps - 1];
	getrusage(RUSAGE_SELF, &s->ru_begin);
	s->t_begin = now_ns();
}

/* After a chunk (in KVM mode: once the guest reported it done, before the next is fed). */
static void phase_check(struct run *r)
{
	if (r->next_bound < r->o->n_bounds && r->accesses == r->o->bounds[r->next_bound]) {
		r->next_bound++;
		phase_end(r);
		phase_begin(r);
	}
}

/* Read the next chunk of the stream into buf; return the number of entries (0 at the end).
 * A chunk ends at the next phase boundary, so the snapshot there falls between two chunks. */
static uint64_t feed(struct run *r, uint32_t *buf, uint64_t max)
{
	uint64_t t0 = now_ns();
	if (r->next_bound < r->o->n_bounds && r->o->bounds[r->next_bound] - r->accesses < max)
		max = r->o->bounds[r->next_bound] - r->accesses;
	size_t want = max * 4, got = 0;
	while (got < want) {
		ssize_t k = read(r->stream_fd, (char *)buf + got, want - got);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			die("reading the stream: %s", strerror(errno));
		}
		if (k == 0)
			break;
		got += (size_t)k;
	}
	if (got % 4)
		die("the stream ends inside an entry (%zu bytes after the last whole one)", got % 4);
	uint64_t n = got / 4;
	for (uint64_t i = 0; i < n; i++)
		if ((buf[i] & 0x7fffffffU) >= r->data_pages)
			die("access %" PRIu64 " is to page %u, but the guest has %" PRIu64 " data pages",
			    r->accesses + i + 1, buf[i] & 0x7fffffffU, r->data_pages);
	r->feed_ns += now_ns() - t0;
	return n;
}

static void note_chunk(struct run *r, uint64_t ns)
{
	r->loop_ns += ns;
	if (!r->chunk_ns)
		return;
	if (r->chunks >= r->chunk_cap) {
		r->chunk_cap = r->chunk_cap ? 2 * r->chunk_cap : 1024;
		r->chunk_ns = realloc(r->chunk_ns, r->chunk_cap * sizeof(*r->chunk_ns));
		if (!r->chunk_ns)
			die("out of memory for chunk times");
	}
	r->chunk_ns[r->chunks] = ns;
}

static uint64_t mem_checksum(const struct run *r)
{
	uint64_t sum = 0;
	for (uint64_t p = 0; p < r->data_pages; p++) {
		const uint64_t *w = (const uint64_t *)(r->mem + DATA_GPA + (p << 12) + ((p & 63) << 6));
		sum += *w * (2 * p + 1);
	}
	return sum;
}

/* --plain: the same loop over this process's own mapping, without KVM. */
static void run_plain(struct run *r, const struct opts *o)
{
	struct loop_state st = {0, 0};
	uint32_t *buf = (uint32_t *)(r->mem + BUF_GPA);
	for (;;) {
		uint64_t n = feed(r, buf, o->chunk);
		if (!n)
			break;
		uint64_t t0 = now_ns();
		access_chunk(r->mem + DATA_GPA, buf, n, &st);
		note_chunk(r, now_ns() - t0);
		r->chunks++;
		r->accesses += n;
		phase_check(r);
	}
	if (st.index != r->accesses)
		die("the loop counted %" PRIu64 " accesses, the stream had %" PRIu64, st.index,
		    r->accesses);
	r->read_sum = st.read_sum;
}

/* ---- KVM ---- */

struct kvm {
	int sys, vm, vcpu;
	struct kvm_run *run;
};

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, int code, int dpl)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->dpl = (uint8_t)dpl;
	s->db = code ? 0 : 1;
	s->s = 1;
	s->l = code ? 1 : 0;
	s->g = 1;
}

static void build_guest(struct run *r)
{
	uint8_t *m = r->mem;
	uint64_t *gdt = (uint64_t *)(m + GDT_GPA);
	gdt[0] = 0;
	gdt[1] = 0x00af9b000000ffffULL; /* 0x08: kernel code, 64-bit */
	gdt[2] = 0x00cf93000000ffffULL; /* 0x10: kernel data */
	gdt[3] = 0x00cff3000000ffffULL; /* 0x18: user data, DPL 3 (SYSRET: STAR base + 8) */
	gdt[4] = 0x00affb000000ffffULL; /* 0x20: user code, 64-bit, DPL 3 (STAR base + 16) */
	uint64_t tss_limit = 0x67;
	gdt[5] = tss_limit | ((TSS_GPA & 0xffffff) << 16) | (0x8bULL << 40) |
		 (((TSS_GPA >> 24) & 0xff) << 56); /* 0x28: TSS, busy */
	gdt[6] = TSS_GPA >> 32;
	/* TSS: rsp0 (offset 4) for exceptions taken in user mode. */
	uint64_t rsp0 = STACK_TOP - 0x8000;
	memcpy(m + TSS_GPA + 4, &rsp0, 8);
	memset(m + TSS_GPA + 0x66, 0x68, 1); /* I/O map base beyond the limit: no bitmap */

	/* Code: the blob, at the same offsets it has in this binary. */
	size_t blob = (size_t)(guest_blob_end - guest_blob_start);
	if (blob > CTL_GPA - CODE_GPA)
		die("guest code is %zu bytes, more than its %llu-byte slot", blob, CTL_GPA - CODE_GPA);
	memcpy(m + CODE_GPA, guest_blob_start, blob);

	/* IDT: vectors 0..31 to the CPL-0 stubs (64-bit interrupt gates). */
	uint64_t *idt = (uint64_t *)(m + IDT_GPA);
	uint64_t stubs = CODE_GPA + (uint64_t)(guest_exc_stubs - guest_blob_start);
	for (int v = 0; v < 32; v++) {
		uint64_t h = stubs + 16 * (uint64_t)v;
		idt[2 * v] = (h & 0xffff) | (0x08ULL << 16) | (0x8eULL << 40) |
			     (((h >> 16) & 0xffff) << 48);
		idt[2 * v + 1] = h >> 32;
	}

	/* Page tables: identity map of all guest RAM with 2 MiB pages, user accessible, and
	 * the MMIO page at the next GiB boundary (its own PD). */
	uint64_t gib = (r->mem_bytes + (1ULL << 30) - 1) >> 30;
	if (PD_GPA + (gib + 1) * 0x1000 > PT_END)
		die("too much guest memory for the page-table area");
	uint64_t *pml4 = (uint64_t *)(m + PML4_GPA), *pdpt = (uint64_t *)(m + PDPT_GPA);
	pml4[0] = PDPT_GPA | 7;
	for (uint64_t g = 0; g < gib; g++) {
		pdpt[g] = (PD_GPA + g * 0x1000) | 7;
		uint64_t *pd = (uint64_t *)(m + PD_GPA + g * 0x1000);
		for (uint64_t i = 0; i < 512; i++) {
			uint64_t gpa = (g << 30) | (i << 21);
			if (gpa < r->mem_bytes)
				pd[i] = gpa | 0x87; /* present, writable, user, 2 MiB */
		}
	}
	r->mmio_gpa = gib << 30;
	pdpt[gib] = (PD_GPA + gib * 0x1000) | 7;
	((uint64_t *)(m + PD_GPA + gib * 0x1000))[0] = r->mmio_gpa | 0x87;

	uint64_t *ctl = (uint64_t *)(m + CTL_GPA);
	ctl[CTL_N / 8] = 0;
	ctl[CTL_BASE / 8] = DATA_GPA;
	ctl[CTL_BUF / 8] = BUF_GPA;
	ctl[CTL_STATE / 8] = 0;
	ctl[CTL_STATE / 8 + 1] = 0;
	ctl[CTL_MMIO / 8] = r->mmio_gpa;
}

static void kvm_setup(struct kvm *k, struct run *r)
{
	k->sys = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (k->sys < 0)
		die("cannot open /dev/kvm: %s", strerror(errno));
	int api = ioctl(k->sys, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION)
		die("KVM API version %d, expected %d", api, KVM_API_VERSION);
	k->vm = ioctl(k->sys, KVM_CREATE_VM, 0);
	if (k->vm < 0)
		die("KVM_CREATE_VM: %s", strerror(errno));
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.flags = 0,
		.guest_phys_addr = 0,
		.memory_size = r->mem_bytes,
		.userspace_addr = (uint64_t)(uintptr_t)r->mem,
	};
	if (ioctl(k->vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
		die("KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
	k->vcpu = ioctl(k->vm, KVM_CREATE_VCPU, 0);
	if (k->vcpu < 0)
		die("KVM_CREATE_VCPU: %s", strerror(errno));
	int run_size = ioctl(k->sys, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (run_size <= 0)
		die("KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	k->run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, k->vcpu, 0);
	if (k->run == MAP_FAILED)
		die("mmap of the vCPU run area: %s", strerror(errno));

	/* CPUID: what KVM supports (long mode must be visible for EFER.LME to be accepted). */
	int nent = 256;
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof(*cpuid) + (size_t)nent * sizeof(cpuid->entries[0]));
	if (!cpuid)
		die("out of memory for CPUID");
	cpuid->nent = (uint32_t)nent;
	if (ioctl(k->sys, KVM_GET_SUPPORTED_CPUID, cpuid) < 0)
		die("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
	if (ioctl(k->vcpu, KVM_SET_CPUID2, cpuid) < 0)
		die("KVM_SET_CPUID2: %s", strerror(errno));
	free(cpuid);

	struct kvm_sregs sregs;
	if (ioctl(k->vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS: %s", strerror(errno));
	sregs.cr3 = PML4_GPA;
	sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10); /* PAE, OSFXSR, OSXMMEXCPT */
	sregs.cr0 = (1U << 0) | (1U << 1) | (1U << 4) | (1U << 5) | (1U << 16) | (1U << 31);
	sregs.efer = (1 << 8) | (1 << 10); /* LME, LMA */
	seg(&sregs.cs, 0x20 | 3, 11, 1, 3);
	seg(&sregs.ss, 0x18 | 3, 3, 0, 3);
	sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss;
	memset(&sregs.tr, 0, sizeof(sregs.tr));
	sregs.tr.base = TSS_GPA;
	sregs.tr.limit = 0x67;
	sregs.tr.selector = 0x28;
	sregs.tr.type = 11;
	sregs.tr.present = 1;
	memset(&sregs.ldt, 0, sizeof(sregs.ldt));
	sregs.ldt.unusable = 1;
	sregs.ldt.type = 2;
	sregs.gdt.base = GDT_GPA;
	sregs.gdt.limit = 7 * 8 - 1;
	sregs.idt.base = IDT_GPA;
	sregs.idt.limit = 32 * 16 - 1;
	if (ioctl(k->vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS: %s", strerror(errno));

	struct kvm_regs regs;
	memset(&regs, 0, sizeof(regs));
	regs.rip = CODE_GPA + (uint64_t)(guest_entry - guest_blob_start);
	regs.rsp = STACK_TOP;
	regs.rflags = 0x2;
	if (ioctl(k->vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS: %s", strerror(errno));

}

static const char *exit_name(uint32_t reason)
{
	switch (reason) {
	case KVM_EXIT_HLT:
		return "HLT";
	case KVM_EXIT_IO:
		return "IO";
	case KVM_EXIT_SHUTDOWN:
		return "SHUTDOWN (triple fault)";
	case KVM_EXIT_FAIL_ENTRY:
		return "FAIL_ENTRY";
	case KVM_EXIT_INTERNAL_ERROR:
		return "INTERNAL_ERROR";
	default:
		return "unexpected";
	}
}

static void run_kvm(struct run *r, struct kvm *k, const struct opts *o)
{
	uint64_t *ctl = (uint64_t *)(r->mem + CTL_GPA);
	uint32_t *buf = (uint32_t *)(r->mem + BUF_GPA);
	uint64_t pending = 0; /* entries handed to the guest, not yet reported done */
	for (;;) {
		uint64_t t0 = now_ns();
		if (ioctl(k->vcpu, KVM_RUN, 0) < 0) {
			if (errno == EINTR)
				continue;
			die("KVM_RUN: %s", strerror(errno));
		}
		uint64_t dt = now_ns() - t0;
		r->exits++;
		struct kvm_run *kr = k->run;
		if (kr->exit_reason == KVM_EXIT_IO && kr->io.port == PORT_EXC) {
			uint8_t v = *((uint8_t *)kr + kr->io.data_offset);
			struct kvm_regs regs;
			ioctl(k->vcpu, KVM_GET_REGS, &regs);
			/* The stub ran on rsp0 after the CPU pushed [error code,] rip, cs, rflags. */
			const uint64_t *f = (const uint64_t *)(r->mem + (regs.rsp & (DATA_GPA - 1)));
			int ec = v == 8 || (v >= 10 && v <= 14) || v == 17;
			die("guest exception vector %u at rip 0x%" PRIx64 " (error code 0x%" PRIx64
			    ", cs 0x%" PRIx64 ")",
			    v, f[ec], ec ? f[0] : 0, f[ec + 1]);
		}
		if (kr->exit_reason != KVM_EXIT_MMIO) {
			struct kvm_regs regs;
			ioctl(k->vcpu, KVM_GET_REGS, &regs);
			die("guest stopped: exit %s (%u) at rip 0x%llx, hw reason 0x%llx",
			    exit_name(kr->exit_reason), kr->exit_reason, regs.rip,
			    (unsigned long long)kr->fail_entry.hardware_entry_failure_reason);
		}
		uint32_t code = 0;
		memcpy(&code, kr->mmio.data, 4);
		if (!kr->mmio.is_write || kr->mmio.len != 4 || kr->mmio.phys_addr != r->mmio_gpa)
			die("unexpected guest MMIO %s of %u bytes at 0x%llx",
			    kr->mmio.is_write ? "write" : "read", kr->mmio.len,
			    (unsigned long long)kr->mmio.phys_addr);
		if (code == REPORT_DONE)
			break;
		if (code != REPORT_CHUNK)
			die("guest reported unknown code %u", code);
		if (pending) {
			note_chunk(r, dt);
			r->chunks++;
			r->accesses += pending;
			phase_check(r);
		}
		pending = feed(r, buf, o->chunk);
		ctl[CTL_N / 8] = pending;
	}
	uint64_t index = ctl[CTL_STATE / 8];
	if (index != r->accesses)
		die("the guest counted %" PRIu64 " accesses, the stream had %" PRIu64, index,
		    r->accesses);
	r->read_sum = ctl[CTL_STATE / 8 + 1];
}

/* KVM binary stats (KVM_GET_STATS_FD) of one fd as JSON members; nothing if unsupported. */
static void print_stats(FILE *out, int fd, const char *name)
{
#ifdef KVM_GET_STATS_FD
	int sfd = ioctl(fd, KVM_GET_STATS_FD, 0);
	if (sfd < 0) {
		fprintf(out, ",\n  \"%s\": null", name);
		return;
	}
	struct kvm_stats_header h;
	if (pread(sfd, &h, sizeof(h), 0) != (ssize_t)sizeof(h)) {
		close(sfd);
		fprintf(out, ",\n  \"%s\": null", name);
		return;
	}
	size_t dsz = sizeof(struct kvm_stats_desc) + h.name_size;
	char *descs = malloc(dsz * h.num_desc);
	if (!descs || pread(sfd, descs, dsz * h.num_desc, h.desc_offset) != (ssize_t)(dsz * h.num_desc)) {
		free(descs);
		close(sfd);
		fprintf(out, ",\n  \"%s\": null", name);
		return;
	}
	fprintf(out, ",\n  \"%s\": {", name);
	int first = 1;
	for (uint32_t i = 0; i < h.num_desc; i++) {
		struct kvm_stats_desc *d = (struct kvm_stats_desc *)(descs + i * dsz);
		uint64_t sum = 0, v;
		for (uint32_t j = 0; j < d->size; j++) {
			if (pread(sfd, &v, 8, h.data_offset + d->offset + 8 * j) != 8)
				break;
			sum += v;
		}
		fprintf(out, "%s\n    \"%.*s\": %" PRIu64, first ? "" : ",", (int)h.name_size, d->name,
			sum);
		first = 0;
	}
	fprintf(out, "\n  }");
	free(descs);
	close(sfd);
#else
	(void)fd;
	fprintf(out, ",\n  \"%s\": null", name);
#endif
}

static void usage(void)
{
	fputs("usage: vmm [--plain] [--mem-mib G] [--chunk N] [--no-checksum] [--chunk-times] "
	      "[--no-kvm-stats] [--no-kernel-stats] [--populate] [--phase-at N]... < stream\n",
	      stderr);
	exit(2);
}

static uint64_t arg_u64(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end || end == s)
		die("%s must be a positive integer (got '%s')", what, s);
	return v;
}

int main(int argc, char **argv)
{
	struct opts o = {.plain = 0, .checksum = 1, .chunk_times = 0, .kvm_stats = 1,
			 .kernel_stats = 1,
			 .mem_mib = 16, .chunk = 131072};
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--plain"))
			o.plain = 1;
		else if (!strcmp(argv[i], "--no-checksum"))
			o.checksum = 0;
		else if (!strcmp(argv[i], "--chunk-times"))
			o.chunk_times = 1;
		else if (!strcmp(argv[i], "--no-kvm-stats"))
			o.kvm_stats = 0;
		else if (!strcmp(argv[i], "--no-kernel-stats"))
			o.kernel_stats = 0;
		else if (!strcmp(argv[i], "--populate"))
			o.populate = 1;
		else if (!strcmp(argv[i], "--mem-mib") && i + 1 < argc)
			o.mem_mib = arg_u64(argv[++i], "--mem-mib");
		else if (!strcmp(argv[i], "--chunk") && i + 1 < argc)
			o.chunk = arg_u64(argv[++i], "--chunk");
		else if (!strcmp(argv[i], "--phase-at") && i + 1 < argc) {
			uint64_t b = arg_u64(argv[++i], "--phase-at");
			uint64_t last = o.n_bounds ? o.bounds[o.n_bounds - 1] : 0;
			if (o.n_bounds == MAX_BOUNDS)
				die("at most %d --phase-at boundaries", MAX_BOUNDS);
			if (!b)
				die("--phase-at must be a positive integer (got 0)");
			if (b <= last)
				die("--phase-at values must be strictly increasing (got %" PRIu64
				    " after %" PRIu64 ")",
				    b, last);
			o.bounds[o.n_bounds++] = b;
		} else
			usage();
	}
	if (o.mem_mib < 4 || o.mem_mib > MAX_MEM_MIB)
		die("--mem-mib must be between 4 and %llu (got %" PRIu64 ")", MAX_MEM_MIB, o.mem_mib);
	if (o.chunk < 1 || o.chunk > MAX_CHUNK)
		die("--chunk must be between 1 and %llu (got %" PRIu64 ")", MAX_CHUNK, o.chunk);

	struct run r;
	memset(&r, 0, sizeof(r));
	r.stream_fd = 0;
	r.o = &o;
	r.mem_bytes = o.mem_mib << 20;
	r.data_pages = (r.mem_bytes - DATA_GPA) >> 12;
	r.mem = mmap(NULL, r.mem_bytes, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r.mem == MAP_FAILED)
		die("mmap of %" PRIu64 " MiB: %s", o.mem_mib, strerror(errno));
	if (madvise(r.mem, r.mem_bytes, MADV_NOHUGEPAGE) < 0)
		die("madvise(MADV_NOHUGEPAGE): %s", strerror(errno));
	/* --populate: every data page resident (and private) in the host before the run, so a
	 * guest first touch costs only KVM's fault (the spte), not the host's allocation. */
	if (o.populate && madvise(r.mem + DATA_GPA, r.mem_bytes - DATA_GPA, 23 /* POPULATE_WRITE */))
		die("madvise(MADV_POPULATE_WRITE): %s", strerror(errno));
	if (o.chunk_times) {
		r.chunk_cap = 1024;
		r.chunk_ns = malloc(r.chunk_cap * sizeof(*r.chunk_ns));
		if (!r.chunk_ns)
			die("out of memory for chunk times");
	}

	struct kvm k = {-1, -1, -1, NULL};
	if (!o.plain) {
		build_guest(&r);
		kvm_setup(&k, &r);
	}
	char cg_path[640], cg_name[512];
	memcg_stat_path(cg_path, sizeof(cg_path), cg_name, sizeof(cg_name));
	r.cg_path = cg_path;
	/* Fault the snapshots in now: the loop's phases should not count their first touch. */
	memset(snaps, 0, (size_t)(o.n_bounds + 2) * sizeof(snaps[0]));
	phase_end(&r);
	phase_begin(&r);
	if (o.plain)
		run_plain(&r, &o);
	else
		run_kvm(&r, &k, &o);
	/* before the checksum, which reads (and may swap in) every page */
	phase_end(&r);
	if (r.next_bound < o.n_bounds)
		die("the stream ended after %" PRIu64 " accesses, before the --phase-at boundary %" PRIu64,
		    r.accesses, o.bounds[r.next_bound]);
	const struct snap *first = &snaps[0], *last = &snaps[r.n_snaps - 1];
	uint64_t wall = last->t_end - first->t_begin;
	uint64_t csum = o.checksum ? mem_checksum(&r) : 0;

	FILE *out = stdout;
	fprintf(out, "{\n  \"mode\": \"%s\",\n", o.plain ? "plain" : "kvm");
	fprintf(out, "  \"mem_mib\": %" PRIu64 ",\n  \"data_pages\": %" PRIu64 ",\n", o.mem_mib,
		r.data_pages);
	fprintf(out, "  \"chunk\": %" PRIu64 ",\n  \"accesses\": %" PRIu64 ",\n", o.chunk,
		r.accesses);
	fprintf(out, "  \"chunks\": %" PRIu64 ",\n  \"exits\": %" PRIu64 ",\n", r.chunks, r.exits);
	fprintf(out, "  \"wall_ns\": %" PRIu64 ",\n  \"loop_ns\": %" PRIu64 ",\n", wall, r.loop_ns);
	fprintf(out, "  \"feed_ns\": %" PRIu64 ",\n", r.feed_ns);
	fprintf(out, "  \"read_sum\": %" PRIu64 ",\n", r.read_sum);
	if (o.checksum)
		fprintf(out, "  \"checksum\": %" PRIu64 ",\n", csum);
	else
		fprintf(out, "  \"checksum\": null,\n");
	fprintf(out, "  \"minflt\": %ld,\n  \"majflt\": %ld,\n",
		last->ru_end.ru_minflt - first->ru_begin.ru_minflt,
		last->ru_end.ru_majflt - first->ru_begin.ru_majflt);
	fprintf(out, "  \"maxrss_kib\": %ld", last->ru_end.ru_maxrss);
	if (r.chunk_ns) {
		fprintf(out, ",\n  \"chunk_ns\": [");
		for (uint64_t i = 0; i < r.chunks; i++)
			fprintf(out, "%s%" PRIu64, i ? "," : "", r.chunk_ns[i]);
		fprintf(out, "]");
	}
	if (o.kernel_stats) {
		print_delta(out, 2, "vmstat_delta", &first->vm, &last->vm);
		fprintf(out, ",\n  \"memcg\": ");
		if (cg_name[0] && strspn(cg_name, "/_-.0123456789abcdefghijklmnopqrstuvwxyz"
						  "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == strlen(cg_name))
			fprintf(out, "\"%s\"", cg_name);
		else
			fprintf(out, "null");
		print_delta(out, 2, "memcg_stat_delta", &first->cg, &last->cg);
	}
	/* Each phase from the snapshot before it: the sums of accesses, loop_ns and the
	 * kernel counters are the run's; wall_ns and faults leave out the snapshots' reads. */
	fprintf(out, ",\n  \"phases\": [");
	for (int i = 1; i < r.n_snaps; i++) {
		const struct snap *a = &snaps[i - 1], *b = &snaps[i];
		fprintf(out, "%s\n    {\n      \"accesses\": %" PRIu64 ",\n      \"wall_ns\": %" PRIu64
			",\n      \"loop_ns\": %" PRIu64 ",\n      \"minflt\": %ld,\n"
			"      \"majflt\": %ld",
			i > 1 ? "," : "", b->accesses - a->accesses, b->t_end - a->t_begin,
			b->loop_ns - a->loop_ns, b->ru_end.ru_minflt - a->ru_begin.ru_minflt,
			b->ru_end.ru_majflt - a->ru_begin.ru_majflt);
		if (o.kernel_stats) {
			print_delta(out, 6, "vmstat_delta", &a->vm, &b->vm);
			print_delta(out, 6, "memcg_stat_delta", &a->cg, &b->cg);
		}
		fprintf(out, "\n    }");
	}
	fprintf(out, "\n  ]");
	if (!o.plain && o.kvm_stats) {
		print_stats(out, k.vm, "kvm_vm_stats");
		print_stats(out, k.vcpu, "kvm_vcpu_stats");
	}
	fprintf(out, "\n}\n");
	if (fflush(out) != 0)
		die("writing the result: %s", strerror(errno));
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/*
 * bufio_hotspot: the test bed's fixture for the dm-bufio 6.4 experiment ("16 hotspot threads
 * simulating btree lookups while another thread dirties the whole device ... acquire the buffers
 * about 25 times faster").
 *
 * Loading it runs the experiment once and returns when it is done: a dm-bufio client on the block
 * device `dev`; `threads` hotspot kernel threads, each reading and releasing every block of its own
 * `region_blocks`-block region, `passes` times; and, unless `dirtier=0`, one thread that reads,
 * marks dirty and releases every block of the device, over and over until the hotspot threads are
 * done, starting writeback every `write_every` blocks and writing everything back at the end.
 *
 * Its own timing is the ground truth bufscope is checked against: each thread prints one line
 *   bufio_hotspot: thread=N role=hotspot|dirtier pid=P acquisitions=A acquire_ns=S elapsed_ns=E
 * where acquire_ns sums the time spent inside dm_bufio_read (the buffer acquisition), then
 *   bufio_hotspot: done threads=N errors=K
 * Unloading the module destroys the client. Nothing here is bufscope's: it only calls dm-bufio's
 * exported functions, as a dm target would.
 */
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/dm-bufio.h>
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/kthread.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/version.h>

static char *dev = "/dev/loop0";
module_param(dev, charp, 0444);
MODULE_PARM_DESC(dev, "block device the client caches");
static uint threads = 16;
module_param(threads, uint, 0444);
MODULE_PARM_DESC(threads, "hotspot threads");
static uint region_blocks = 1024;
module_param(region_blocks, uint, 0444);
MODULE_PARM_DESC(region_blocks, "blocks in each hotspot thread's region");
static uint passes = 20;
module_param(passes, uint, 0444);
MODULE_PARM_DESC(passes, "times each hotspot thread goes over its region");
/* Not block_size: blkdev.h has a function of that name. */
static uint block_bytes = 4096;
module_param_named(block_size, block_bytes, uint, 0444);
MODULE_PARM_DESC(block_size, "dm-bufio block size in bytes");
static bool dirtier = true;
module_param(dirtier, bool, 0444);
MODULE_PARM_DESC(dirtier, "run the thread that dirties the whole device");
static uint write_every = 1024;
module_param(write_every, uint, 0444);
MODULE_PARM_DESC(write_every, "the dirtier starts writeback every this many blocks");

struct worker {
	struct task_struct *task;
	uint index;
	bool hotspot;
	pid_t pid;
	u64 acquisitions;
	u64 acquire_ns;
	u64 elapsed_ns;
	int error;
};

static struct dm_bufio_client *client;
static sector_t device_blocks;
static struct worker *workers;
static uint n_workers;
/* Hotspot threads still running: the dirtier stops when it reaches 0. */
static atomic_t hotspots_running;
static struct completion all_done;
static atomic_t workers_running;
static int errors;

#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
static struct file *bdev_file;
#define hotspot_bdev() file_bdev(bdev_file)
#else
static struct block_device *bdev;
#define hotspot_bdev() bdev
#endif

/* One acquisition: dm_bufio_read timed, the buffer released; marked dirty first when asked. */
static int touch(struct worker *w, sector_t block, bool dirty)
{
	struct dm_buffer *buf;
	u64 start = ktime_get_ns();
	void *data = dm_bufio_read(client, block, &buf);

	w->acquire_ns += ktime_get_ns() - start;
	if (IS_ERR(data))
		return PTR_ERR(data);
	w->acquisitions++;
	if (dirty)
		dm_bufio_mark_buffer_dirty(buf);
	dm_bufio_release(buf);
	return 0;
}

static int hotspot(struct worker *w)
{
	sector_t first = (sector_t)w->index * region_blocks;
	uint pass, i;
	int r;

	for (pass = 0; pass < passes; pass++) {
		for (i = 0; i < region_blocks; i++) {
			r = touch(w, first + i, false);
			if (r)
				return r;
		}
		cond_resched();
	}
	return 0;
}

static int dirty_everything(struct worker *w)
{
	sector_t block = 0;
	u64 since_write = 0;
	int r;

	while (atomic_read(&hotspots_running) > 0) {
		r = touch(w, block, true);
		if (r)
			return r;
		if (++since_write >= write_every) {
			dm_bufio_write_dirty_buffers_async(client);
			since_write = 0;
		}
		block = (block + 1) % device_blocks;
		cond_resched();
	}
	return dm_bufio_write_dirty_buffers(client);
}

static int worker_fn(void *arg)
{
	struct worker *w = arg;
	u64 start = ktime_get_ns();

	w->pid = current->pid;
	w->error = w->hotspot ? hotspot(w) : dirty_everything(w);
	w->elapsed_ns = ktime_get_ns() - start;
	if (w->hotspot)
		atomic_dec(&hotspots_running);
	if (atomic_dec_and_test(&workers_running))
		complete(&all_done);
	return 0;
}

static void close_device(void)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	fput(bdev_file);
#else
	blkdev_put(bdev, FMODE_READ | FMODE_WRITE | FMODE_EXCL);
#endif
}

static int __init bufio_hotspot_init(void)
{
	uint i;
	int r;

	if (!threads || !region_blocks || !block_bytes)
		return -EINVAL;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 9, 0)
	bdev_file = bdev_file_open_by_path(dev, BLK_OPEN_READ | BLK_OPEN_WRITE, THIS_MODULE, NULL);
	if (IS_ERR(bdev_file))
		return PTR_ERR(bdev_file);
#else
	bdev = blkdev_get_by_path(dev, FMODE_READ | FMODE_WRITE | FMODE_EXCL, THIS_MODULE);
	if (IS_ERR(bdev))
		return PTR_ERR(bdev);
#endif
	client = dm_bufio_client_create(hotspot_bdev(), block_bytes, 1, 0, NULL, NULL, 0);
	if (IS_ERR(client)) {
		r = PTR_ERR(client);
		goto close;
	}
	device_blocks = dm_bufio_get_device_size(client);
	if (device_blocks < (sector_t)threads * region_blocks) {
		pr_err("bufio_hotspot: %s has %llu blocks, the regions need %llu\n", dev,
		       (unsigned long long)device_blocks, (unsigned long long)threads * region_blocks);
		r = -ENOSPC;
		goto destroy;
	}
	n_workers = threads + (dirtier ? 1 : 0);
	workers = kcalloc(n_workers, sizeof(*workers), GFP_KERNEL);
	if (!workers) {
		r = -ENOMEM;
		goto destroy;
	}
	init_completion(&all_done);
	atomic_set(&hotspots_running, threads);
	atomic_set(&workers_running, n_workers);
	/* Create every thread before any runs, so that none starts long before the others. */
	for (i = 0; i < n_workers; i++) {
		workers[i].index = i;
		workers[i].hotspot = i < threads;
		workers[i].task = workers[i].hotspot ?
			kthread_create(worker_fn, &workers[i], "bufio_hot/%u", i) :
			kthread_create(worker_fn, &workers[i], "bufio_dirty");
		if (IS_ERR(workers[i].task)) {
			r = PTR_ERR(workers[i].task);
			pr_err("bufio_hotspot: starting thread %u failed: %d\n", i, r);
			/* The created ones run as if the rest had finished at once. */
			atomic_sub(n_workers - i, &workers_running);
			atomic_sub(threads - min(i, threads), &hotspots_running);
			n_workers = i;
			errors++;
			break;
		}
	}
	for (i = 0; i < n_workers; i++)
		wake_up_process(workers[i].task);
	if (n_workers)
		wait_for_completion(&all_done);
	for (i = 0; i < n_workers; i++) {
		struct worker *w = &workers[i];

		if (w->error) {
			pr_err("bufio_hotspot: thread=%u failed: %d\n", i, w->error);
			errors++;
		}
		pr_info("bufio_hotspot: thread=%u role=%s pid=%d acquisitions=%llu acquire_ns=%llu elapsed_ns=%llu\n",
			i, w->hotspot ? "hotspot" : "dirtier", w->pid, w->acquisitions,
			w->acquire_ns, w->elapsed_ns);
	}
	pr_info("bufio_hotspot: done threads=%u errors=%d\n", n_workers, errors);
	/* The client stays until the module is removed: its buffers are the warm cache. */
	return 0;

destroy:
	dm_bufio_client_destroy(client);
close:
	close_device();
	return r;
}

static void __exit bufio_hotspot_exit(void)
{
	kfree(workers);
	dm_bufio_client_destroy(client);
	close_device();
}

module_init(bufio_hotspot_init);
module_exit(bufio_hotspot_exit);
MODULE_DESCRIPTION("bufscope test bed: dm-bufio hotspot readers and a dirtier, self-timed");
MODULE_LICENSE("GPL");

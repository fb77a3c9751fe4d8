//! A page whose first touch sleeps until the test says so: userfaultfd(2) in missing mode, so a
//! thread can be made to hold a kernel lock while it sleeps, for as long as a test needs.
//!
//! Hand-written rather than the `userfaultfd` crate: that crate generates its bindings with
//! bindgen from the kernel headers at build time (libclang and a C compiler for a test fixture);
//! the three ioctls below are all a test needs, their layouts from include/uapi/linux/userfaultfd.h.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const UFFD_API: u64 = 0xaa;
/// _IOWR(0xaa, 0x3f, struct uffdio_api)
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
/// _IOWR(0xaa, 0x00, struct uffdio_register)
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
/// _IOWR(0xaa, 0x03, struct uffdio_copy)
const UFFDIO_COPY: libc::c_ulong = 0xc028_aa03;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
/// struct uffd_msg's size and its event code for a page fault.
const MSG_LEN: usize = 32;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// One anonymous page registered with a userfaultfd: a touch of it (from user space or, as in
/// `write(2)` copying from it, from the kernel) sleeps in handle_userfault until [`Self::fill`].
pub struct SleepingPage {
    uffd: OwnedFd,
    page: *mut u8,
    len: usize,
}

// SAFETY: the page is only touched through the kernel (faults and UFFDIO_COPY), and the fd is a
// plain descriptor.
unsafe impl Send for SleepingPage {}
unsafe impl Sync for SleepingPage {}

impl SleepingPage {
    /// A fresh page; fails where userfaultfd is not allowed (root, or
    /// vm.unprivileged_userfaultfd=1, is needed for faults taken by the kernel).
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscalls on memory and descriptors this function owns; each result is
        // checked before use.
        unsafe {
            let fd = libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let uffd = OwnedFd::from_raw_fd(fd as i32);
            let mut api = UffdioApi {
                api: UFFD_API,
                features: 0,
                ioctls: 0,
            };
            if libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) != 0 {
                return Err(io::Error::last_os_error());
            }
            let len = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let page = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if page == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            let mut register = UffdioRegister {
                start: page as u64,
                len: len as u64,
                mode: UFFDIO_REGISTER_MODE_MISSING,
                ioctls: 0,
            };
            if libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut register) != 0 {
                let e = io::Error::last_os_error();
                libc::munmap(page, len);
                return Err(e);
            }
            Ok(Self {
                uffd,
                page: page.cast(),
                len,
            })
        }
    }

    /// The page's address and length, to hand to a syscall as its buffer.
    pub fn as_ptr(&self) -> *const u8 {
        self.page
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Blocks until some thread touches the page and sleeps on it: the signal that it is
    /// inside its syscall, holding whatever it took before the touch.
    pub fn wait_for_fault(&self) -> io::Result<()> {
        let mut msg = [0u8; MSG_LEN];
        // SAFETY: reads at most MSG_LEN bytes into msg.
        let n = unsafe { libc::read(self.uffd.as_raw_fd(), msg.as_mut_ptr().cast(), MSG_LEN) };
        if n != MSG_LEN as isize {
            return Err(io::Error::last_os_error());
        }
        if msg[0] != UFFD_EVENT_PAGEFAULT {
            return Err(io::Error::other(format!("userfaultfd event {:#x}", msg[0])));
        }
        Ok(())
    }

    /// Fills the page (with `byte`), waking the thread that sleeps on it.
    pub fn fill(&self, byte: u8) -> io::Result<()> {
        let source = vec![byte; self.len];
        let mut copy = UffdioCopy {
            dst: self.page as u64,
            src: source.as_ptr() as u64,
            len: self.len as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: copies len bytes from source (len long) to the registered page.
        if unsafe { libc::ioctl(self.uffd.as_raw_fd(), UFFDIO_COPY, &mut copy) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for SleepingPage {
    fn drop(&mut self) {
        // SAFETY: the mapping this value made.
        unsafe { libc::munmap(self.page.cast(), self.len) };
    }
}

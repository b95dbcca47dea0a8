//! The server side of a libqb shared-memory ring buffer (ringbuffer.c,
//! ringbuffer_int.h, ringbuffer_helper.c, unix.c), written from the layout:
//!
//! * `<name>-header`: `struct qb_ringbuffer_shared_s` = `u32 write_pt @0`,
//!   `u32 read_pt @4`, `u32 word_size @8`, `char hdr_path[4096] @12`,
//!   `char data_path[4096] @4108`, `i32 ref_count @8204`,
//!   `sem_t posix_sem @8208` (process-shared glibc semaphore, 32 bytes),
//!   user data @8240 (an `i32` flow-control flag); 8248 bytes + 4.
//! * `<name>-data`: `word_size` 32-bit words, mapped twice back to back so
//!   that a chunk crossing the end is contiguous in memory.
//!
//! A chunk is `u32 size, u32 magic` followed by the data, padded to a word.
//! The writer stores the size, advances `write_pt`, sets the magic to
//! `0xA1A1A1A1` and posts the semaphore; the reader checks the magic at
//! `read_pt`, copies the data, clears the header (magic `0xD0D0D0D0`) and
//! advances `read_pt`. A writer needs `len + 12` bytes of free space.
//!
//! The client maps the same files and can write anything into them, so
//! nothing read from shared memory is trusted: pointers and sizes are
//! checked against our own copy of the geometry, and the data is copied out
//! before it is looked at.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

use crate::error::IpcError;
use crate::mmap::{create_file, page_size, Mapping, Unlink};
use crate::wire::QB_PATH_MAX;

const OFF_WRITE_PT: usize = 0;
const OFF_READ_PT: usize = 4;
const OFF_WORD_SIZE: usize = 8;
const OFF_HDR_PATH: usize = 12;
const OFF_DATA_PATH: usize = OFF_HDR_PATH + QB_PATH_MAX;
const OFF_REF_COUNT: usize = OFF_DATA_PATH + QB_PATH_MAX;
const OFF_SEM: usize = 8208;
const OFF_USER_DATA: usize = 8240;
/// `sizeof(struct qb_ringbuffer_shared_s)`.
const SHARED_HDR_SIZE: usize = 8248;
/// The server passes `sizeof(int32_t)` of user data for every ring.
const HDR_FILE_SIZE: usize = SHARED_HDR_SIZE + 4;

const _: () = assert!(OFF_REF_COUNT == 8204);
const _: () = assert!(OFF_SEM == (OFF_REF_COUNT + 4).next_multiple_of(8));
const _: () = assert!(std::mem::size_of::<libc::sem_t>() == 32);
const _: () = assert!(OFF_USER_DATA == OFF_SEM + 32);

/// `QB_RB_CHUNK_MARGIN`: chunk header (2 words) + 1 word for padding.
pub const CHUNK_MARGIN: usize = 12;
const CHUNK_HEADER_WORDS: u32 = 2;
const MAGIC: u32 = 0xA1A1_A1A1;
const MAGIC_DEAD: u32 = 0xD0D0_D0D0;
const MAGIC_ALLOC: u32 = 0xA110_CED0;

/// Failures while moving chunks through a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring buffer full")]
    Full,
    #[error("corrupt ring buffer chunk")]
    BadChunk,
    #[error("shared memory truncated by the client")]
    Truncated,
    #[error("semaphore: {0}")]
    Sem(io::Error),
}

fn with_suffix(name: &Path, suffix: &str) -> PathBuf {
    let mut s = name.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A ring buffer created by the server.
pub struct ShmRing {
    hdr: Mapping,
    data: Mapping,
    /// Size of the data file in bytes (`word_size * 4`).
    real_size: usize,
    word_size: u32,
    /// Our copies of the pointers we own (read side: read_pt, write side:
    /// write_pt); the shared copies are written, never trusted.
    read_pt: u32,
    write_pt: u32,
    _files: [Unlink; 2],
}

impl ShmRing {
    /// Create `<name>-header` and `<name>-data` for messages of up to
    /// `max_msg_size` bytes, owned by `owner` (uid, gid).
    pub fn create(
        name: &Path,
        max_msg_size: usize,
        owner: (u32, u32),
    ) -> Result<ShmRing, IpcError> {
        let real_size = Self::data_size(max_msg_size).ok_or_else(|| {
            IpcError::shm("too large", name, io::Error::from_raw_os_error(libc::EFBIG))
        })?;
        let word_size = (real_size / 4) as u32;

        let hdr_path = with_suffix(name, "-header");
        let data_path = with_suffix(name, "-data");
        for p in [&hdr_path, &data_path] {
            if p.as_os_str().len() >= QB_PATH_MAX {
                return Err(crate::wire::PathTooLong(p.as_os_str().len()).into());
            }
        }

        let (hdr_file, hdr_guard) = create_file(&hdr_path, HDR_FILE_SIZE, owner)?;
        let hdr = Mapping::shared(&hdr_file, HDR_FILE_SIZE)
            .map_err(|e| IpcError::shm("cannot map", &hdr_path, e))?;
        let (data_file, data_guard) = create_file(&data_path, real_size, owner)?;
        let data = Mapping::circular(&data_file, real_size)
            .map_err(|e| IpcError::shm("cannot map", &data_path, e))?;

        let ring = ShmRing {
            hdr,
            data,
            real_size,
            word_size,
            read_pt: 0,
            write_pt: 0,
            _files: [hdr_guard, data_guard],
        };
        ring.init_header(hdr_path.as_os_str(), data_path.as_os_str())?;
        Ok(ring)
    }

    /// Size of the data file of a ring for messages of up to
    /// `max_msg_size` bytes: room for one such message and its chunk
    /// header, rounded up to a page (`qb_rb_open`).
    pub fn data_size(max_msg_size: usize) -> Option<usize> {
        max_msg_size
            .checked_add(CHUNK_MARGIN + 1)
            .and_then(|s| s.checked_next_multiple_of(page_size()))
            .filter(|&s| s / 4 <= u32::MAX as usize / 2)
    }

    /// Shared memory a ring for `max_msg_size` takes: both files, in pages.
    pub fn bytes(max_msg_size: usize) -> u64 {
        let hdr = HDR_FILE_SIZE.next_multiple_of(page_size());
        Self::data_size(max_msg_size).map_or(u64::MAX, |d| (hdr + d) as u64)
    }

    fn init_header(&self, hdr_path: &OsStr, data_path: &OsStr) -> Result<(), IpcError> {
        self.hdr_u32(OFF_WORD_SIZE)
            .store(self.word_size, Ordering::Relaxed);
        self.hdr_u32(OFF_WRITE_PT).store(0, Ordering::Relaxed);
        self.hdr_u32(OFF_READ_PT).store(0, Ordering::Relaxed);
        for (off, path) in [(OFF_HDR_PATH, hdr_path), (OFF_DATA_PATH, data_path)] {
            let bytes = path.as_bytes();
            // SAFETY: the field is QB_PATH_MAX bytes inside the header
            // mapping and bytes.len() < QB_PATH_MAX was checked; the rest of
            // the field is zero (fresh file), so the path is NUL-terminated.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.hdr.ptr.as_ptr().add(off),
                    bytes.len(),
                );
            }
        }
        // SAFETY: the sem_t lies inside the header mapping at an 8-aligned
        // offset; pshared = 1 because the client process uses it too.
        let rc = unsafe { libc::sem_init(self.sem(), 1, 0) };
        if rc != 0 {
            return Err(IpcError::shm(
                "cannot init semaphore in",
                PathBuf::from(hdr_path),
                io::Error::last_os_error(),
            ));
        }
        self.user_data().store(0, Ordering::Relaxed);
        self.hdr_i32(OFF_REF_COUNT).store(1, Ordering::Release);
        Ok(())
    }

    fn hdr_u32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off % 4 == 0 && off + 4 <= SHARED_HDR_SIZE);
        // SAFETY: `off` is one of the aligned field offsets inside the
        // header mapping, which lives as long as `self`.
        unsafe { &*self.hdr.ptr.as_ptr().add(off).cast::<AtomicU32>() }
    }

    fn hdr_i32(&self, off: usize) -> &AtomicI32 {
        debug_assert!(off % 4 == 0 && off + 4 <= SHARED_HDR_SIZE);
        // SAFETY: as in hdr_u32.
        unsafe { &*self.hdr.ptr.as_ptr().add(off).cast::<AtomicI32>() }
    }

    fn user_data(&self) -> &AtomicI32 {
        // SAFETY: the user data word lies inside the header mapping
        // (HDR_FILE_SIZE bytes), 8-aligned.
        unsafe { &*self.hdr.ptr.as_ptr().add(OFF_USER_DATA).cast::<AtomicI32>() }
    }

    fn sem(&self) -> *mut libc::sem_t {
        // SAFETY: the semaphore lies inside the header mapping.
        unsafe { self.hdr.ptr.as_ptr().add(OFF_SEM).cast::<libc::sem_t>() }
    }

    /// The data word at index `idx` (taken modulo the ring size).
    fn word(&self, idx: u32) -> &AtomicU32 {
        let i = (idx % self.word_size) as usize;
        // SAFETY: i < word_size, so the word lies inside the first copy of
        // the data mapping; 4-aligned because the mapping is page-aligned.
        unsafe { &*self.data.ptr.as_ptr().add(i * 4).cast::<AtomicU32>() }
    }

    /// Start of the data of a chunk whose header is at `idx`.
    fn chunk_data(&self, idx: u32) -> *mut u8 {
        let i = ((idx + CHUNK_HEADER_WORDS) % self.word_size) as usize;
        // SAFETY: i < word_size, inside the first copy of the data mapping;
        // thanks to the second copy, `real_size` bytes from here are mapped.
        unsafe { self.data.ptr.as_ptr().add(i * 4) }
    }

    /// Index after a chunk of `size` bytes at `idx` (`qb_rb_chunk_step`).
    fn step(&self, idx: u32, size: usize) -> u32 {
        let words = CHUNK_HEADER_WORDS as usize + size.div_ceil(4);
        ((idx as usize + words) % self.word_size as usize) as u32
    }

    /// True once either mapping was replaced after a SIGBUS.
    fn truncated(&self) -> bool {
        self.hdr.hit() || self.data.hit()
    }

    /// Largest chunk the ring can ever hold.
    pub fn max_chunk(&self) -> usize {
        self.real_size - CHUNK_MARGIN
    }

    fn sem_value(&self) -> i32 {
        let mut v: libc::c_int = 0;
        // SAFETY: the semaphore was initialised in init_header and stays
        // mapped; `v` is a valid out pointer.
        let rc = unsafe { libc::sem_getvalue(self.sem(), &mut v) };
        if rc == 0 {
            v
        } else {
            0
        }
    }

    fn sem_post(&self) -> Result<(), RingError> {
        // SAFETY: the semaphore was initialised in init_header.
        if unsafe { libc::sem_post(self.sem()) } != 0 {
            return Err(RingError::Sem(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Take the next chunk, if the client has posted one. `max_len` bounds
    /// the accepted size.
    pub fn read_chunk(&mut self, max_len: usize) -> Result<Option<Vec<u8>>, RingError> {
        let res = self.read_chunk_inner(max_len);
        if self.truncated() {
            return Err(RingError::Truncated);
        }
        res
    }

    fn read_chunk_inner(&mut self, max_len: usize) -> Result<Option<Vec<u8>>, RingError> {
        loop {
            // SAFETY: the semaphore was initialised in init_header.
            if unsafe { libc::sem_trywait(self.sem()) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(RingError::Sem(e)),
            }
        }
        let rp = self.read_pt;
        if self.word(rp + 1).load(Ordering::Acquire) != MAGIC {
            // Give the notification back, as libqb does.
            let _ = self.sem_post();
            return Err(RingError::BadChunk);
        }
        let size = self.word(rp).load(Ordering::Relaxed) as usize;
        if size > max_len || size > self.max_chunk() {
            return Err(RingError::BadChunk);
        }
        let mut buf = vec![0u8; size];
        // SAFETY: `size` <= max_chunk < real_size bytes are mapped from the
        // chunk data on (double mapping); `buf` has room for `size` bytes.
        // The client may write concurrently; we only use our copy.
        unsafe {
            std::ptr::copy_nonoverlapping(self.chunk_data(rp), buf.as_mut_ptr(), size);
        }
        // Reclaim: clear the header before publishing the new read_pt.
        self.word(rp).store(0, Ordering::Relaxed);
        self.word(rp + 1).store(MAGIC_DEAD, Ordering::Release);
        let next = self.step(rp, size);
        self.read_pt = next;
        self.hdr_u32(OFF_READ_PT).store(next, Ordering::Release);
        Ok(Some(buf))
    }

    /// Free space in bytes (`qb_rb_space_free`).
    fn space_free(&self) -> Result<usize, RingError> {
        let rp = self.hdr_u32(OFF_READ_PT).load(Ordering::Acquire);
        if rp >= self.word_size {
            return Err(RingError::BadChunk);
        }
        let (ws, wp) = (self.word_size, self.write_pt);
        let words = if wp > rp {
            rp + ws - wp - 1
        } else if wp < rp {
            rp - wp - 1
        } else if self.sem_value() > 0 {
            0
        } else {
            ws
        };
        Ok(words as usize * 4)
    }

    /// Write one chunk made of `parts` and notify the client.
    pub fn write_chunk(&mut self, parts: &[&[u8]]) -> Result<(), RingError> {
        let res = self.write_chunk_inner(parts);
        if self.truncated() {
            return Err(RingError::Truncated);
        }
        res
    }

    fn write_chunk_inner(&mut self, parts: &[&[u8]]) -> Result<(), RingError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > self.max_chunk() || self.space_free()? < len + CHUNK_MARGIN {
            return Err(RingError::Full);
        }
        let wp = self.write_pt;
        self.word(wp).store(0, Ordering::Relaxed);
        self.word(wp + 1).store(MAGIC_ALLOC, Ordering::Release);
        let mut dst = self.chunk_data(wp);
        for part in parts {
            // SAFETY: the parts add up to len <= max_chunk < real_size bytes,
            // all mapped from the chunk data on (double mapping); the free
            // space check keeps them off unread chunks.
            unsafe {
                std::ptr::copy_nonoverlapping(part.as_ptr(), dst, part.len());
                dst = dst.add(part.len());
            }
        }
        self.word(wp).store(len as u32, Ordering::Relaxed);
        let next = self.step(wp, len);
        self.write_pt = next;
        self.hdr_u32(OFF_WRITE_PT).store(next, Ordering::Release);
        self.word(wp + 1).store(MAGIC, Ordering::Release);
        self.sem_post()
    }
}

impl Drop for ShmRing {
    fn drop(&mut self) {
        // A client still attached sees ref_count != 2 and reports ENOTCONN.
        // The semaphore is not destroyed: the client may still wait on it
        // (a glibc sem_destroy does nothing anyway).
        self.hdr_i32(OFF_REF_COUNT).store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in a temporary directory and a second view of it playing the
    /// client, which is what a libqb client does with the same files.
    fn ring(max: usize) -> (tempfile::TempDir, ShmRing) {
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: getuid/getgid have no preconditions.
        let owner = unsafe { (libc::getuid(), libc::getgid()) };
        let r = ShmRing::create(&dir.path().join("qb-test"), max, owner).unwrap();
        (dir, r)
    }

    /// Client-side write into the request ring (what qb_rb_chunk_write does).
    fn client_write(r: &mut ShmRing, data: &[u8]) {
        let wp = r.hdr_u32(OFF_WRITE_PT).load(Ordering::Acquire);
        r.write_pt = wp;
        r.write_chunk(&[data]).unwrap();
    }

    /// Client-side read from the response ring (what qb_rb_chunk_read does).
    fn client_read(r: &mut ShmRing) -> Option<Vec<u8>> {
        r.read_pt = r.hdr_u32(OFF_READ_PT).load(Ordering::Acquire);
        r.read_chunk(usize::MAX).unwrap()
    }

    #[test]
    fn header_layout() {
        let (dir, r) = ring(1 << 20);
        assert_eq!(r.real_size, (1 << 20) + 4096);
        assert_eq!(r.word_size as usize * 4, r.real_size);
        assert_eq!(
            r.hdr_u32(OFF_WORD_SIZE).load(Ordering::Relaxed),
            r.word_size
        );
        assert_eq!(r.hdr_i32(OFF_REF_COUNT).load(Ordering::Relaxed), 1);
        let hdr = std::fs::read(dir.path().join("qb-test-header")).unwrap();
        assert_eq!(hdr.len(), HDR_FILE_SIZE);
        let want = dir.path().join("qb-test-header");
        let got = &hdr[OFF_HDR_PATH..OFF_HDR_PATH + want.as_os_str().len() + 1];
        assert_eq!(&got[..got.len() - 1], want.as_os_str().as_bytes());
        assert_eq!(got[got.len() - 1], 0);
        let data = std::fs::metadata(dir.path().join("qb-test-data")).unwrap();
        assert_eq!(data.len() as usize, r.real_size);
        drop(r);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn chunks_go_round() {
        let (_dir, mut r) = ring(100);
        // 4096-byte ring: many chunks of odd sizes wrap around the end.
        for i in 0..500usize {
            let msg: Vec<u8> = (0..(i % 97) + 1).map(|b| (b + i) as u8).collect();
            client_write(&mut r, &msg);
            assert_eq!(r.read_chunk(4096).unwrap().unwrap(), msg);
        }
        assert_eq!(r.read_chunk(4096).unwrap(), None);
    }

    #[test]
    fn response_ring_fills_up() {
        let (_dir, mut r) = ring(100);
        let big = vec![7u8; 1000];
        let mut n = 0;
        while r.write_chunk(&[&big[..500], &big[500..]]).is_ok() {
            n += 1;
        }
        assert_eq!(n, 4); // 4096 bytes: four chunks of 1008 bytes
        assert!(matches!(r.write_chunk(&[&big]), Err(RingError::Full)));
        assert_eq!(client_read(&mut r).unwrap(), big);
        assert!(r.write_chunk(&[&big]).is_ok());
        let too_big = vec![0u8; r.max_chunk() + 1];
        assert!(matches!(r.write_chunk(&[&too_big]), Err(RingError::Full)));
    }

    #[test]
    fn corrupt_chunks_are_refused() {
        let (_dir, mut r) = ring(100);
        client_write(&mut r, b"hello");
        r.word(0).store(100_000, Ordering::Relaxed);
        assert!(matches!(r.read_chunk(4096), Err(RingError::BadChunk)));
        // A bad magic: the notification is given back.
        let (_dir, mut r) = ring(100);
        client_write(&mut r, b"hello");
        r.word(1).store(0, Ordering::Relaxed);
        assert!(matches!(r.read_chunk(4096), Err(RingError::BadChunk)));
        assert_eq!(r.sem_value(), 1);
        // A client that truncates its files: no SIGBUS, an error.
        let (dir, mut r) = ring(100);
        client_write(&mut r, b"hello");
        for f in ["qb-test-header", "qb-test-data"] {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(f))
                .unwrap();
            file.set_len(0).unwrap();
        }
        assert!(matches!(r.read_chunk(4096), Err(RingError::Truncated)));
        assert!(matches!(r.write_chunk(&[b"x"]), Err(RingError::Truncated)));
        drop(r);
        // A bad read pointer on the write side.
        let (_dir, mut r) = ring(100);
        r.hdr_u32(OFF_READ_PT).store(u32::MAX, Ordering::Relaxed);
        assert!(matches!(r.write_chunk(&[b"x"]), Err(RingError::BadChunk)));
    }
}

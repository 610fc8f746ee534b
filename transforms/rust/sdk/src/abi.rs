//! The canonical ABI of the `transformer` world, by hand.
//!
//! Layouts (canonical ABI, wasm32): `event` is 56 bytes, align 8: `ts-ns` u64 @0,
//! `source` (ptr, len) @8, `topic` @16, `key` option: tag u8 @24 and (ptr, len) @28,
//! `headers` (ptr, len) @36, `payload` (ptr, len) @44. `header` is 16 bytes: name @0,
//! value @8. `record-error` is 12 bytes: index u32 @0, reason @4. The result of `process`
//! is two lists, written to a return area; `init`'s `result<_, string>` is tag u8 @0 and
//! the error string @4. Everything the host lowers into our memory was allocated by
//! `cabi_realloc` with the global allocator, so we take ownership of it; everything we
//! return is kept alive until the host calls the matching `cabi_post_*`.

use alloc::alloc::{alloc, dealloc, realloc as re, Layout};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::ptr;

use crate::{Event, Header, Transform};

#[link(wasm_import_module = "dataweaver:transform/host@0.1.0")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, ptr: *const u8, len: usize);
}

/// Calls the host's `log`.
pub fn log(level: i32, msg: &str) {
    unsafe { host_log(level, msg.as_ptr(), msg.len()) }
}

static mut STATE: *mut u8 = ptr::null_mut();
static mut RET: [u32; 4] = [0; 4];
static mut KEEP: Option<Keep> = None;

/// What a returned result points into, freed in `post_*`.
struct Keep {
    _events: Vec<Event>,
    _event_area: Vec<u64>,
    _header_area: Vec<u32>,
    _reasons: Vec<String>,
    _error_area: Vec<u32>,
}

/// `cabi_realloc`: the allocator the host uses to pass lists and strings in.
///
/// # Safety
/// Called by the host with the canonical ABI's arguments.
pub unsafe fn realloc(old: *mut u8, old_len: usize, align: usize, new_len: usize) -> *mut u8 {
    if new_len == 0 {
        if old_len != 0 {
            dealloc(old, Layout::from_size_align_unchecked(old_len, align));
        }
        return align as *mut u8;
    }
    let p = if old_len == 0 {
        alloc(Layout::from_size_align_unchecked(new_len, align))
    } else {
        re(old, Layout::from_size_align_unchecked(old_len, align), new_len)
    };
    if p.is_null() {
        core::arch::wasm32::unreachable()
    }
    p
}

unsafe fn take_bytes(p: u32, len: u32) -> Vec<u8> {
    if len == 0 {
        return Vec::new();
    }
    Vec::from_raw_parts(p as *mut u8, len as usize, len as usize)
}

unsafe fn take_string(p: u32, len: u32) -> String {
    // The host checked UTF-8 when it lowered the string.
    String::from_utf8_unchecked(take_bytes(p, len))
}

unsafe fn rd32(base: *const u8, off: usize) -> u32 {
    ptr::read(base.add(off) as *const u32)
}

/// The `init` export.
///
/// # Safety
/// Called by the host with a string it lowered.
pub unsafe fn init<T: Transform>(p: u32, len: u32) -> *mut u8 {
    let config = take_string(p, len);
    RET = [0; 4];
    match T::init(&config) {
        Ok(t) => {
            if !STATE.is_null() {
                drop(Box::from_raw(STATE as *mut T));
            }
            STATE = Box::into_raw(Box::new(t)) as *mut u8;
        }
        Err(e) => {
            RET[0] = 1;
            RET[1] = e.as_ptr() as u32;
            RET[2] = e.len() as u32;
            KEEP = Some(Keep {
                _events: Vec::new(),
                _event_area: Vec::new(),
                _header_area: Vec::new(),
                _reasons: alloc::vec![e],
                _error_area: Vec::new(),
            });
        }
    }
    ptr::addr_of_mut!(RET) as *mut u8
}

/// Frees what `init` returned.
///
/// # Safety
/// Called by the host after it read `init`'s result.
pub unsafe fn post(_ret: *mut u8) {
    KEEP = None;
}

/// The `process` export.
///
/// # Safety
/// Called by the host with a `list<event>` it lowered.
pub unsafe fn process<T: Transform>(p: u32, n: u32) -> *mut u8 {
    let n = n as usize;
    let base = p as *mut u8;
    let mut inputs = Vec::with_capacity(n);
    for i in 0..n {
        let e = base.add(i * 56);
        let nh = rd32(e, 40) as usize;
        let hp = rd32(e, 36) as *mut u8;
        let mut headers = Vec::with_capacity(nh);
        for j in 0..nh {
            let h = hp.add(j * 16);
            headers.push(Header {
                name: take_string(rd32(h, 0), rd32(h, 4)),
                value: take_string(rd32(h, 8), rd32(h, 12)),
            });
        }
        if nh > 0 {
            dealloc(hp, Layout::from_size_align_unchecked(nh * 16, 4));
        }
        inputs.push(Event {
            ts_ns: ptr::read(e as *const u64),
            source: take_string(rd32(e, 8), rd32(e, 12)),
            topic: take_string(rd32(e, 16), rd32(e, 20)),
            key: if *e.add(24) == 0 {
                None
            } else {
                Some(take_bytes(rd32(e, 28), rd32(e, 32)))
            },
            headers,
            payload: take_bytes(rd32(e, 44), rd32(e, 48)),
        });
    }
    if n > 0 {
        dealloc(base, Layout::from_size_align_unchecked(n * 56, 8));
    }

    if STATE.is_null() {
        core::arch::wasm32::unreachable()
    }
    let t = &mut *(STATE as *mut T);
    let mut events = Vec::with_capacity(n);
    let mut errors: Vec<(u32, String)> = Vec::new();
    for (i, ev) in inputs.into_iter().enumerate() {
        if let Err(reason) = t.record(ev, &mut events) {
            errors.push((i as u32, reason));
        }
    }
    lower(events, errors)
}

unsafe fn lower(events: Vec<Event>, errors: Vec<(u32, String)>) -> *mut u8 {
    let mut area: Vec<u64> = alloc::vec![0; events.len() * 7];
    // All headers of the batch in one allocation (sized first, so it never moves).
    let nh: usize = events.iter().map(|e| e.headers.len()).sum();
    let mut header_area: Vec<u32> = Vec::with_capacity(nh * 4);
    let a = area.as_mut_ptr() as *mut u8;
    let w32 = |off: usize, v: u32| ptr::write(a.add(off) as *mut u32, v);
    for (i, ev) in events.iter().enumerate() {
        let o = i * 56;
        ptr::write(a.add(o) as *mut u64, ev.ts_ns);
        w32(o + 8, ev.source.as_ptr() as u32);
        w32(o + 12, ev.source.len() as u32);
        w32(o + 16, ev.topic.as_ptr() as u32);
        w32(o + 20, ev.topic.len() as u32);
        match &ev.key {
            Some(k) => {
                *a.add(o + 24) = 1;
                w32(o + 28, k.as_ptr() as u32);
                w32(o + 32, k.len() as u32);
            }
            None => *a.add(o + 24) = 0,
        }
        w32(o + 36, header_area.as_ptr().add(header_area.len()) as u32);
        w32(o + 40, ev.headers.len() as u32);
        for h in &ev.headers {
            header_area.push(h.name.as_ptr() as u32);
            header_area.push(h.name.len() as u32);
            header_area.push(h.value.as_ptr() as u32);
            header_area.push(h.value.len() as u32);
        }
        w32(o + 44, ev.payload.as_ptr() as u32);
        w32(o + 48, ev.payload.len() as u32);
    }
    let mut error_area: Vec<u32> = Vec::with_capacity(errors.len() * 3);
    let mut reasons = Vec::with_capacity(errors.len());
    for (i, r) in errors {
        error_area.push(i);
        error_area.push(r.as_ptr() as u32);
        error_area.push(r.len() as u32);
        reasons.push(r);
    }
    RET = [
        area.as_ptr() as u32,
        events.len() as u32,
        error_area.as_ptr() as u32,
        reasons.len() as u32,
    ];
    KEEP = Some(Keep {
        _events: events,
        _event_area: area,
        _header_area: header_area,
        _reasons: reasons,
        _error_area: error_area,
    });
    ptr::addr_of_mut!(RET) as *mut u8
}

/// Exports the world's functions for a [`Transform`] type.
#[macro_export]
macro_rules! export_transform {
    ($t:ty) => {
        #[export_name = "dataweaver:transform/transformer@0.1.0#init"]
        pub unsafe extern "C" fn __dw_init(p: u32, len: u32) -> *mut u8 {
            $crate::abi::init::<$t>(p, len)
        }
        #[export_name = "cabi_post_dataweaver:transform/transformer@0.1.0#init"]
        pub unsafe extern "C" fn __dw_post_init(r: *mut u8) {
            $crate::abi::post(r)
        }
        #[export_name = "dataweaver:transform/transformer@0.1.0#process"]
        pub unsafe extern "C" fn __dw_process(p: u32, n: u32) -> *mut u8 {
            $crate::abi::process::<$t>(p, n)
        }
        #[export_name = "cabi_post_dataweaver:transform/transformer@0.1.0#process"]
        pub unsafe extern "C" fn __dw_post_process(r: *mut u8) {
            $crate::abi::post(r)
        }
        #[no_mangle]
        pub unsafe extern "C" fn cabi_realloc(
            old: *mut u8,
            old_len: usize,
            align: usize,
            new_len: usize,
        ) -> *mut u8 {
            $crate::abi::realloc(old, old_len, align, new_len)
        }
    };
}

//! Taking a consumed record off librdkafka's buffer, as the workers read
//! it.
//!
//! rdkafka's header reader (`Headers::iter`, `get`) unwraps each header's
//! name as UTF-8, so one record whose producer named a header in other
//! bytes would panic the worker reading it — every time the partition is
//! read again. [`detach`] reads the names as bytes first, through
//! librdkafka's own calls, and leaves out a header whose name is not
//! UTF-8: an unknown header, ignored like any other the decoder does not
//! ask for. Every header left can be read safely.

#![allow(unsafe_code)]

use std::ffi::CStr;

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, Header, Message as _, OwnedHeaders, OwnedMessage};

/// `message` detached, without the headers whose names are not UTF-8.
pub(crate) fn detach(message: &BorrowedMessage<'_>) -> OwnedMessage {
    let headers = raw_headers(message);
    if headers
        .iter()
        .all(|(name, _)| std::str::from_utf8(name).is_ok())
    {
        return message.detach();
    }
    let kept = headers
        .into_iter()
        .filter_map(|(name, value)| Some((std::str::from_utf8(name).ok()?, value)))
        .fold(OwnedHeaders::new(), |kept, (key, value)| {
            kept.insert(Header { key, value })
        });
    OwnedMessage::new(
        message.payload().map(<[u8]>::to_vec),
        message.key().map(<[u8]>::to_vec),
        message.topic().to_owned(),
        message.timestamp(),
        message.partition(),
        message.offset(),
        Some(kept),
    )
}

/// Every header of `message`, its name as bytes (up to a NUL byte, as
/// librdkafka hands names out).
fn raw_headers<'m>(message: &'m BorrowedMessage<'_>) -> Vec<(&'m [u8], Option<&'m [u8]>)> {
    let mut headers = std::ptr::null_mut();
    // SAFETY: `message.ptr()` is the live message `message` wraps; the
    // headers librdkafka parses from it belong to it and live as long.
    let err = unsafe { rdsys::rd_kafka_message_headers(message.ptr(), &mut headers) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || headers.is_null() {
        // `_NOENT`: the record has no headers.
        return Vec::new();
    }
    // SAFETY: `headers` is the message's header list, checked above.
    let count = unsafe { rdsys::rd_kafka_header_cnt(headers) };
    (0..count)
        .filter_map(|index| {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
            // SAFETY: `index` is below the list's count; librdkafka fills
            // in pointers into the list, which outlives `message`'s borrow.
            let err = unsafe {
                rdsys::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size)
            };
            if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                return None;
            }
            // SAFETY: librdkafka keeps each name NUL-terminated, and a
            // non-null value `size` bytes long, for the list's lifetime.
            let name = unsafe { CStr::from_ptr(name) }.to_bytes();
            let value = (!value.is_null())
                .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) });
            Some((name, value))
        })
        .collect()
}

// Protocol v2 (see web_viewer/hub.py and render.py): a text "hello" with the class table and the
// initial overlay opacity, then binary frames = uint32 BE header length N, N bytes of JSON header
// (seq, telemetry, jpeg_bytes, mask_bytes), the camera JPEG, then the category ids as a grey PNG of
// the JPEG's size. A message that does not parse is logged and dropped: the next one may.

const PROTOCOL_VERSION = 2;
const HEADER_LEN_BYTES = 4;
const utf8 = new TextDecoder();

// The hello ({type, v, classes, alpha}), or null for anything else.
export function parseHello(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch (err) {
    console.warn("viewer: bad text message", err);
    return null;
  }
  if (message.type !== "hello") return null;
  if (message.v !== PROTOCOL_VERSION) console.warn(`viewer: server speaks protocol ${message.v}`);
  return message;
}

// {meta, jpeg, mask}: the header, and views of the two images in the buffer (no copy); or null.
export function parseFrame(buffer) {
  if (buffer.byteLength < HEADER_LEN_BYTES) return null;
  const headerLen = new DataView(buffer).getUint32(0, false);
  const jpegStart = HEADER_LEN_BYTES + headerLen;
  if (jpegStart > buffer.byteLength) return null;
  let meta;
  try {
    meta = JSON.parse(utf8.decode(new Uint8Array(buffer, HEADER_LEN_BYTES, headerLen)));
  } catch (err) {
    console.warn("viewer: bad frame header", err);
    return null;
  }
  const maskStart = jpegStart + meta.jpeg_bytes;
  if (meta.v !== PROTOCOL_VERSION || maskStart + meta.mask_bytes !== buffer.byteLength) {
    console.warn("viewer: frame does not match protocol v2", meta);
    return null;
  }
  return {
    meta,
    jpeg: new Uint8Array(buffer, jpegStart, meta.jpeg_bytes),
    mask: new Uint8Array(buffer, maskStart, meta.mask_bytes),
  };
}

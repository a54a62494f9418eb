// A frame's two images decoded: the camera picture as a bitmap, the mask as one category id per pixel.

let scratch = null; // one canvas to read mask pixels back from

// {bitmap, ids, meta}, or null when either image does not decode (logged; the next frame may).
export async function decode(meta, jpeg, mask) {
  const [image, ids] = await Promise.allSettled([
    createImageBitmap(new Blob([jpeg], { type: "image/jpeg" })),
    // No colour management: the grey levels ARE the category ids.
    createImageBitmap(new Blob([mask], { type: "image/png" }),
                      { colorSpaceConversion: "none", premultiplyAlpha: "none" }),
  ]);
  if (image.status !== "fulfilled" || ids.status !== "fulfilled") {
    if (image.status === "fulfilled") image.value.close();
    if (ids.status === "fulfilled") ids.value.close();
    console.warn(`viewer: cannot decode frame ${meta.seq} of ${meta.stream}`);
    return null;
  }
  const bitmap = image.value;
  const frame = { bitmap, ids: readIds(ids.value, bitmap.width, bitmap.height), meta };
  ids.value.close();
  return frame;
}

function readIds(maskBitmap, width, height) {
  if (!scratch) {
    const canvas = typeof OffscreenCanvas === "function" ? new OffscreenCanvas(width, height)
      : document.createElement("canvas");
    scratch = canvas.getContext("2d", { willReadFrequently: true });
  }
  const canvas = scratch.canvas;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  scratch.imageSmoothingEnabled = false; // a mask of another size is scaled nearest: ids never mix
  scratch.drawImage(maskBitmap, 0, 0, width, height);
  const rgba = scratch.getImageData(0, 0, width, height).data;
  const ids = new Uint8Array(width * height);
  for (let i = 0, j = 0; i < ids.length; i += 1, j += 4) ids[i] = rgba[j];
  return ids;
}

// COCO compressed RLE in the browser: the counts string -> runs -> filled and outline pixels.
// Runs go column by column (x outer, y inner) and alternate background/foreground, background first.
"use strict";

// Each run length is written in 5-bit groups, least significant first, as characters from '0' (48);
// bit 0x20 says another group follows, bit 0x10 of the last group is the sign. From the third run on,
// the value stored is the difference to the run two places before.
function rleRuns(counts) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let value = 0, shift = 0, more = true;
    while (more) {
      if (p >= counts.length) throw new Error("RLE counts end inside a number");
      const c = counts.charCodeAt(p++) - 48;
      value |= (c & 0x1f) << shift;
      more = (c & 0x20) !== 0;
      shift += 5;
      if (!more && (c & 0x10)) value |= -1 << shift;
    }
    if (runs.length > 2) value += runs[runs.length - 2];
    runs.push(value);
  }
  return runs;
}

// Foreground pixels (row-major indices y * width + x) and the outline pixels among them (a 4-neighbour
// outside the mask or outside the image). `scratch` is a zeroed Uint8Array(width * height), left zeroed.
function maskPixels(rle, scratch) {
  const [height, width] = rle.size;
  const runs = rleRuns(rle.counts);
  let count = 0;
  for (let i = 1; i < runs.length; i += 2) count += runs[i];
  const fill = new Int32Array(count);
  let pos = 0, k = 0;
  for (let i = 0; i < runs.length; i++) {
    const len = runs[i];
    if (i % 2 === 1) {
      for (let j = pos; j < pos + len; j++) {
        const x = Math.floor(j / height), y = j - x * height;
        const idx = y * width + x;
        fill[k++] = idx;
        scratch[idx] = 1;
      }
    }
    pos += len;
  }
  const edge = [];
  for (let n = 0; n < fill.length; n++) {
    const idx = fill[n], y = Math.floor(idx / width), x = idx - y * width;
    if (x === 0 || y === 0 || x === width - 1 || y === height - 1 || !scratch[idx - 1] || !scratch[idx + 1] ||
        !scratch[idx - width] || !scratch[idx + width]) edge.push(idx);
  }
  for (let n = 0; n < fill.length; n++) scratch[fill[n]] = 0;
  return { fill, edge: Int32Array.from(edge) };
}

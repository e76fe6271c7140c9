// The server's mouse pointer, shown as the CSS cursor over the screen canvas: the local
// pointer moves without a round trip, and it looks like the server's.

import { POINTER_DEFAULT, POINTER_HIDDEN, POINTER_BITMAP } from "./protocol.js";

export class Pointer {
  constructor(element) {
    this.element = element;
    this.kind = "default";
  }

  apply(m) {
    if (m.kind === POINTER_DEFAULT) {
      this.set("default", "default");
    } else if (m.kind === POINTER_HIDDEN) {
      this.set("hidden", "none");
    } else if (m.kind === POINTER_BITMAP) {
      this.set("bitmap", this.bitmapCursor(m));
    }
    // POINTER_POSITION: the server moved its pointer; a page cannot move the user's, and the
    // next local movement wins anyway.
  }

  set(kind, css) {
    this.kind = kind;
    this.element.style.cursor = css;
  }

  // A PNG data URL of the bitmap with its hot spot, falling back to the arrow where the
  // browser refuses the image (browsers ignore cursor images larger than 128×128).
  bitmapCursor(m) {
    if (m.width === 0 || m.height === 0) return "none";
    const c = document.createElement("canvas");
    c.width = m.width;
    c.height = m.height;
    const pixels = new Uint8ClampedArray(m.width * m.height * 4);
    pixels.set(m.rgba.subarray(0, pixels.length));
    c.getContext("2d").putImageData(new ImageData(pixels, m.width, m.height), 0, 0);
    const hotX = Math.min(m.hotX, m.width - 1);
    const hotY = Math.min(m.hotY, m.height - 1);
    return `url(${c.toDataURL("image/png")}) ${hotX} ${hotY}, default`;
  }
}

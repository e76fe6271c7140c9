// The RDP graphics pipeline's surfaces and cache (MS-RDPEGFX), one canvas per surface, and
// the visible screen canvas that shows the mapped surfaces. Operations arrive already in
// order (see pipeline.js); each one here is synchronous.
//
// The screen is updated from the surfaces through a dirty rectangle: the operations draw
// into surface canvases and mark what changed; flush() copies the changed area of every
// mapped surface onto the screen, in mapping order, once per frame.

function makeCanvas(width, height) {
  if (typeof OffscreenCanvas !== "undefined") return new OffscreenCanvas(width, height);
  const c = document.createElement("canvas");
  c.width = width;
  c.height = height;
  return c;
}

// `r` clipped to `width`×`height`, or null when nothing is left.
function clip(r, width, height) {
  const left = Math.max(0, r.left);
  const top = Math.max(0, r.top);
  const right = Math.min(width, r.right);
  const bottom = Math.min(height, r.bottom);
  return right > left && bottom > top ? { left, top, right, bottom } : null;
}

export const FORMAT_XRGB = 0;
export const FORMAT_ARGB = 1;

class Surface {
  constructor(width, height, format) {
    this.width = width;
    this.height = height;
    this.opaque = format !== FORMAT_ARGB;
    this.canvas = makeCanvas(width, height);
    this.ctx = this.canvas.getContext("2d", { alpha: !this.opaque });
    this.ctx.imageSmoothingEnabled = false;
    this.mapped = null; // {x, y} on the screen once mapped
  }

  // Prepares `r` for a copy that replaces its pixels: on a surface with alpha, drawing is
  // source-over, so the old pixels must go first.
  prepare(left, top, width, height) {
    if (!this.opaque) this.ctx.clearRect(left, top, width, height);
  }
}

export class Compositor {
  constructor(screen) {
    this.screen = screen;
    this.ctx = screen.getContext("2d", { alpha: false });
    this.surfaces = new Map(); // id → Surface, in creation order (the stacking order)
    this.cache = new Map();    // slot → canvas
    this.dirty = null;         // screen rectangle to refresh at the next flush
    this.ignored = 0;          // operations naming a surface or slot that does not exist
  }

  get width() { return this.screen.width; }
  get height() { return this.screen.height; }

  // The desktop size (DesktopSize). Resizing a canvas clears it, so only on a change.
  resize(width, height) {
    if (this.screen.width === width && this.screen.height === height) return;
    this.screen.width = width;
    this.screen.height = height;
    this.clearScreen();
  }

  clearScreen() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.screen.width, this.screen.height);
    this.dirty = null;
  }

  // ResetGraphics: all surfaces and cache slots go; the output is `width`×`height`.
  reset(width, height) {
    this.surfaces.clear();
    this.cache.clear();
    this.screen.width = width;
    this.screen.height = height;
    this.clearScreen();
  }

  createSurface(id, width, height, format) {
    this.surfaces.delete(id);
    this.surfaces.set(id, new Surface(width, height, format));
  }

  deleteSurface(id) {
    if (!this.surfaces.delete(id)) this.ignored++;
  }

  mapSurface(id, x, y) {
    const s = this.surface(id);
    if (!s) return;
    s.mapped = { x, y };
    this.markDirty(s, { left: 0, top: 0, right: s.width, bottom: s.height });
  }

  solidFill(id, color, rects) {
    const s = this.surface(id);
    if (!s) return;
    const alpha = s.opaque ? 1 : color.a / 255;
    s.ctx.fillStyle = `rgba(${color.r},${color.g},${color.b},${alpha})`;
    for (const rect of rects) {
      const r = clip(rect, s.width, s.height);
      if (!r) continue;
      const w = r.right - r.left;
      const h = r.bottom - r.top;
      s.prepare(r.left, r.top, w, h);
      s.ctx.fillRect(r.left, r.top, w, h);
      this.markDirty(s, r);
    }
  }

  surfaceToSurface(srcId, dstId, srcRect, points) {
    const src = this.surface(srcId);
    const dst = this.surface(dstId);
    if (!src || !dst) return;
    const r = clip(srcRect, src.width, src.height);
    if (!r) return;
    const w = r.right - r.left;
    const h = r.bottom - r.top;
    // Drawing a canvas onto itself copies the source first (HTML canvas rules), so
    // overlapping moves within one surface come out right.
    for (const p of points) {
      dst.prepare(p.x, p.y, w, h);
      dst.ctx.drawImage(src.canvas, r.left, r.top, w, h, p.x, p.y, w, h);
      this.markDirty(dst, { left: p.x, top: p.y, right: p.x + w, bottom: p.y + h });
    }
  }

  surfaceToCache(id, slot, srcRect) {
    const s = this.surface(id);
    if (!s) return;
    const r = clip(srcRect, s.width, s.height);
    if (!r) return;
    const w = r.right - r.left;
    const h = r.bottom - r.top;
    const entry = makeCanvas(w, h);
    entry.getContext("2d", { alpha: !s.opaque }).drawImage(s.canvas, r.left, r.top, w, h, 0, 0, w, h);
    this.cache.set(slot, entry);
  }

  cacheToSurface(slot, id, points) {
    const entry = this.cache.get(slot);
    const s = this.surface(id);
    if (!entry) {
      this.ignored++;
      return;
    }
    if (!s) return;
    for (const p of points) {
      s.prepare(p.x, p.y, entry.width, entry.height);
      s.ctx.drawImage(entry, p.x, p.y);
      this.markDirty(s, { left: p.x, top: p.y, right: p.x + entry.width, bottom: p.y + entry.height });
    }
  }

  evict(slot) {
    if (!this.cache.delete(slot)) this.ignored++;
  }

  // An H.264 picture covering `dest`: copies only `regions`, each from picture position
  // (r.left − dest.left, r.top − dest.top) to surface position (r.left, r.top). One
  // drawImage through a clip of all regions: every drawImage of a VideoFrame converts the
  // whole picture to RGB, and servers send many regions (FreeRDP: one per 64×64 tile).
  drawPicture(id, frame, dest, regions) {
    const s = this.surface(id);
    if (!s) return;
    // Where the picture lands on the surface.
    const covered = {
      left: dest.left, top: dest.top,
      right: dest.left + frame.displayWidth, bottom: dest.top + frame.displayHeight,
    };
    const area = new Path2D();
    let any = false;
    for (const region of regions) {
      const r = clip(region, s.width, s.height);
      const c = r && clip(r, covered.right, covered.bottom);
      if (!c || c.right <= covered.left || c.bottom <= covered.top) continue;
      const left = Math.max(c.left, covered.left);
      const top = Math.max(c.top, covered.top);
      const w = c.right - left;
      const h = c.bottom - top;
      area.rect(left, top, w, h);
      s.prepare(left, top, w, h);
      this.markDirty(s, { left, top, right: c.right, bottom: c.bottom });
      any = true;
    }
    if (!any) return;
    s.ctx.save();
    s.ctx.clip(area);
    s.ctx.drawImage(frame, dest.left, dest.top);
    s.ctx.restore();
  }

  // Tile: non-premultiplied RGBA pixels the gateway decoded (lossless codecs), put as they
  // are, alpha included.
  tile(id, rect, rgba) {
    const s = this.surface(id);
    if (!s) return;
    const w = rect.right - rect.left;
    const h = rect.bottom - rect.top;
    const pixels = new Uint8ClampedArray(rgba.buffer, rgba.byteOffset, w * h * 4);
    s.ctx.putImageData(new ImageData(pixels, w, h), rect.left, rect.top);
    this.markDirty(s, rect);
  }

  // TileAlpha: new alpha for the pixels already on the surface. XRGB surfaces are opaque.
  tileAlpha(id, rect, alpha) {
    const s = this.surface(id);
    if (!s || s.opaque) return;
    const r = clip(rect, s.width, s.height);
    if (!r) return;
    const tw = rect.right - rect.left;
    const w = r.right - r.left;
    const h = r.bottom - r.top;
    const img = s.ctx.getImageData(r.left, r.top, w, h);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        img.data[(y * w + x) * 4 + 3] = alpha[(y + r.top - rect.top) * tw + (x + r.left - rect.left)];
      }
    }
    s.ctx.putImageData(img, r.left, r.top);
    this.markDirty(s, r);
  }

  surface(id) {
    const s = this.surfaces.get(id);
    if (!s) this.ignored++;
    return s;
  }

  markDirty(s, r) {
    if (!s.mapped) return;
    const d = clip({
      left: r.left + s.mapped.x, top: r.top + s.mapped.y,
      right: r.right + s.mapped.x, bottom: r.bottom + s.mapped.y,
    }, this.screen.width, this.screen.height);
    if (!d) return;
    if (!this.dirty) {
      this.dirty = d;
    } else {
      this.dirty = {
        left: Math.min(this.dirty.left, d.left), top: Math.min(this.dirty.top, d.top),
        right: Math.max(this.dirty.right, d.right), bottom: Math.max(this.dirty.bottom, d.bottom),
      };
    }
  }

  // Copies the dirty area of every mapped surface onto the screen, lowest surface first.
  flush() {
    const d = this.dirty;
    if (!d) return;
    this.dirty = null;
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(d.left, d.top, d.right - d.left, d.bottom - d.top);
    for (const s of this.surfaces.values()) {
      if (!s.mapped) continue;
      const r = clip({
        left: d.left - s.mapped.x, top: d.top - s.mapped.y,
        right: d.right - s.mapped.x, bottom: d.bottom - s.mapped.y,
      }, s.width, s.height);
      if (!r) continue;
      const w = r.right - r.left;
      const h = r.bottom - r.top;
      this.ctx.drawImage(s.canvas, r.left, r.top, w, h, r.left + s.mapped.x, r.top + s.mapped.y, w, h);
    }
  }
}

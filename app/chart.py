"""LossChartWidget: train and validation loss drawn with QPainter (QtCharts is not in
PySide6-Essentials).

Points are appended to a buffer as events arrive; the widget repaints on a timer at most 20 times
a second, and a long series is downsampled to about one point per pixel column (min and max kept,
so spikes stay visible). A flood of events therefore never stalls the window.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QPainter, QPalette, QPen, QPolygonF
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

REDRAW_MS = 50  # 20 Hz at most
TRAIN_COLOR = QColor(10, 132, 255)  # macOS system blue
VALID_COLOR = QColor(255, 149, 0)  # macOS system orange


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing (the first points are not pulled
    towards zero)."""
    if weight <= 0 or not values:
        return list(values)
    out, last, n = [], 0.0, 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


class Series:
    """A growable (step, value) buffer: O(1) appends, a running EMA, numpy views for drawing."""

    def __init__(self, smoothing: float = 0.0):
        self.n = 0
        self._x: list[float] = []
        self._y: list[float] = []
        self._s: list[float] = []  # smoothed values, kept up to date on append
        self.smoothing = smoothing
        self._ema = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def __len__(self) -> int:
        return self.n

    def append(self, x: float, y: float) -> None:
        self._x.append(x)
        self._y.append(y)
        self.n += 1
        self.lo = min(self.lo, y)
        self.hi = max(self.hi, y)
        w = self.smoothing
        self._ema = self._ema * w + (1 - w) * y
        self._s.append(self._ema / (1 - w**self.n) if w > 0 else y)

    def drop_from(self, x: float) -> None:
        """Forget the points at step `x` and later (a resumed run repeats them, or restarts)."""
        keep = 0
        while keep < self.n and self._x[keep] < x:
            keep += 1
        if keep == self.n:
            return
        del self._x[keep:], self._y[keep:]
        self.n = keep
        self.lo = min(self._y, default=math.inf)
        self.hi = max(self._y, default=-math.inf)
        self.set_smoothing(self.smoothing)

    def set_smoothing(self, weight: float) -> None:
        self.smoothing = weight
        self._s = ema(self._y, weight)
        self._ema = self._s[-1] * (1 - weight**self.n) if self._s and weight > 0 else 0.0

    @property
    def xs(self) -> list[float]:
        return self._x

    @property
    def ys(self) -> list[float]:
        return self._y

    @property
    def smoothed(self) -> list[float]:
        return self._s


def downsample(xs: list[float], ys: list[float], buckets: int, mode: str = "envelope"):
    """About `buckets` points per series for drawing: "envelope" keeps each bucket's min and max
    (spikes stay visible), "mean" its average (for the smoothed line). Slices and the built-in
    min/max/sum keep this at a few milliseconds for a few hundred thousand points."""
    n = len(xs)
    if n <= 2 * buckets or buckets < 1:
        return list(xs), list(ys)
    out_x: list[float] = []
    out_y: list[float] = []
    step = n / buckets
    for b in range(buckets):
        lo, hi = int(b * step), int((b + 1) * step)
        if hi <= lo:
            continue
        seg = ys[lo:hi]
        if mode == "mean":
            out_x.append(xs[(lo + hi - 1) // 2])
            out_y.append(sum(seg) / len(seg))
        else:
            out_x += (xs[lo], xs[lo])
            out_y += (min(seg), max(seg))
    out_x.append(xs[-1])
    out_y.append(ys[-1])
    return out_x, out_y


def curves_of(events: list[dict], smoothing: float) -> tuple[Series, Series, int]:
    """(train, validation, total steps) of a run's events, as the chart draws them: later values of
    a repeated step (a resume) replace the earlier ones. Plain Python, no Qt: a worker thread
    builds them for a long run's events.jsonl."""
    train, valid, total = Series(smoothing), Series(0.0), 0
    for e in events:
        kind = e.get("event")
        if kind == "progress":
            _add_point(train, e.get("step", 0), e.get("train_loss"))
            total = int(e.get("total") or total)
        elif kind == "eval":
            _add_point(valid, e.get("step", 0), e.get("val_loss"))
        elif kind == "started":
            total = int(e.get("total_steps") or 0)
    return train, valid, total


def _add_point(series: Series, step: float, loss: float | None) -> bool:
    """Append (step, loss) when loss is a finite number; True when it was added."""
    if loss is None or not math.isfinite(loss):
        return False
    if len(series) and float(step) <= series.xs[-1]:
        # A resumed run goes back to its checkpoint (or to step 0): the later values of those
        # steps replace the earlier ones, so the line never zig-zags back in time.
        series.drop_from(float(step))
    series.append(float(step), float(loss))
    return True


class LossChartWidget(QWidget):
    """Loss curves with smoothing, a log-scale option and a hover read-out."""

    sig_hover = Signal(str)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumSize(320, 200)
        self.setMouseTracking(True)
        self.smoothing = 0.6
        self.train = Series(self.smoothing)
        self.valid = Series(0.0)
        self.log_scale = False
        self.total_steps = 0
        self.placeholder = "The loss curve appears here when training starts."
        self.points_drawn = 0  # points of the last paint (tests, benchmarks)
        self.paints = 0
        self._hover_x: float | None = None
        self._dirty = False
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._on_timer_timeout)
        self._timer.start()

    # -- data ---------------------------------------------------------------------------------
    def clear(self) -> None:
        self.train = Series(self.smoothing)
        self.valid = Series(0.0)
        self.total_steps = 0
        self._hover_x = None
        self._dirty = True

    def add_train(self, step: float, loss: float | None) -> None:
        self._add(self.train, step, loss)

    def add_valid(self, step: float, loss: float | None) -> None:
        self._add(self.valid, step, loss)

    def _add(self, series: Series, step: float, loss: float | None) -> None:
        if _add_point(series, step, loss):
            self._dirty = True

    def load_events(self, events: list[dict]) -> None:
        """Replace the curves with those of a run's events.jsonl."""
        self.clear()
        self.train, self.valid, self.total_steps = curves_of(events, self.smoothing)
        self.update()

    def merge_history(self, history: tuple[Series, Series, int]) -> None:
        """Put a run's earlier curve (`curves_of`, built off the GUI thread) before the points
        that arrived since: a resumed run's worker may already be reporting when it is ready.
        The newer points win where the two overlap (a resume repeats steps after its checkpoint)."""
        train, valid, total = history
        for old, new in ((train, self.train), (valid, self.valid)):
            if len(new):
                old.drop_from(new.xs[0])
                for x, y in zip(new.xs, new.ys):
                    old.append(x, y)
        self.train, self.valid = train, valid
        self.total_steps = self.total_steps or total
        self._dirty = True

    def set_smoothing(self, weight: float) -> None:
        self.smoothing = max(0.0, min(0.99, weight))
        self.train.set_smoothing(self.smoothing)
        self.update()

    def set_log_scale(self, on: bool) -> None:
        self.log_scale = bool(on)
        self.update()

    @property
    def point_count(self) -> int:
        return len(self.train) + len(self.valid)

    def _on_timer_timeout(self) -> None:
        if self._dirty:
            self._dirty = False
            self.update()

    # -- geometry -----------------------------------------------------------------------------
    def _plot_rect(self) -> QRectF:
        return QRectF(52, 14, max(10, self.width() - 52 - 16), max(10, self.height() - 14 - 34))

    def _ranges(self) -> tuple[float, float, float, float]:
        x0 = 0.0
        last = [s.xs[-1] for s in (self.train, self.valid) if len(s)]
        x1 = max(max(last) if last else 1.0, float(self.total_steps or 0), 1.0)
        lows, highs = self._bounds()
        if self.log_scale:
            pos_lo = [v for v in lows if v > 0] or [1.0]
            pos_hi = [v for v in highs if v > 0] or [1.0]
            y0, y1 = math.log10(min(pos_lo)), math.log10(max(pos_hi))
            if y1 - y0 < 1e-9:
                y0, y1 = y0 - 0.5, y1 + 0.5
            pad = (y1 - y0) * 0.06
            return x0, x1, y0 - pad, y1 + pad
        y0, y1 = (min(lows), max(highs)) if lows else (0.0, 1.0)
        ticks = nice_ticks(y0, y1)
        return x0, x1, ticks[0], ticks[-1]

    def y_ticks(self) -> list[float]:
        """The values of the horizontal grid lines (in the axis' own scale, log10 when log)."""
        _, _, y0, y1 = self._ranges()
        if self.log_scale:
            return [y0 + (y1 - y0) * i / 4 for i in range(5)]
        lows, highs = self._bounds()
        return nice_ticks(min(lows), max(highs)) if lows else nice_ticks(0.0, 1.0)

    def _bounds(self) -> tuple[list[float], list[float]]:
        series = [s for s in (self.train, self.valid) if len(s)]
        return [s.lo for s in series], [s.hi for s in series]

    def _ty(self, y: float) -> float:
        if self.log_scale:
            return math.log10(y) if y > 0 else -12.0
        return y

    # -- painting -----------------------------------------------------------------------------
    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt API
        self.paints += 1
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        base = pal.color(QPalette.ColorRole.Base)
        text = pal.color(QPalette.ColorRole.Text)
        grid = QColor(text)
        grid.setAlpha(28)
        muted = QColor(text)
        muted.setAlpha(140)
        p.fillRect(self.rect(), base)
        rect = self._plot_rect()
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() * 0.85))
        p.setFont(font)
        if not self.point_count:
            p.setPen(muted)
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
            self.points_drawn = 0
            p.end()
            return
        x0, x1, y0, y1 = self._ranges()

        def to_px(x: float, y: float) -> QPointF:
            ty = self._ty(y)
            return QPointF(
                rect.left() + (x - x0) / (x1 - x0) * rect.width(),
                rect.bottom() - (ty - y0) / (y1 - y0) * rect.height(),
            )

        # grid and axis labels
        p.setPen(QPen(grid, 1))
        ticks = self.y_ticks()
        for fy in ticks:
            py = rect.bottom() - (fy - y0) / (y1 - y0) * rect.height()
            p.drawLine(QPointF(rect.left(), py), QPointF(rect.right(), py))
            value = 10**fy if self.log_scale else fy
            p.setPen(muted)
            p.drawText(
                QRectF(0, py - 8, rect.left() - 6, 16),
                Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                f"{value:.3g}" if self.log_scale else tick_label(value, ticks),
            )
            p.setPen(QPen(grid, 1))
        for i in range(5):
            px = rect.left() + rect.width() * i / 4
            step = x0 + (x1 - x0) * i / 4
            p.setPen(muted)
            p.drawText(
                QRectF(px - 40, rect.bottom() + 4, 80, 16),
                Qt.AlignmentFlag.AlignCenter,
                f"{step:.0f}",
            )
        p.drawText(
            QRectF(rect.left(), rect.bottom() + 18, rect.width(), 16),
            Qt.AlignmentFlag.AlignCenter,
            "step",
        )

        drawn = 0
        buckets = max(16, int(rect.width() / 2))
        tr = self.train
        if len(tr):
            dx, dy = downsample(tr.xs, tr.ys, buckets, "envelope")
            if self.smoothing > 0 and len(tr) > 2:
                # The raw series is a dense zigzag. Qt strokes a wide or translucent polyline as
                # one outline (costly, up to a second for a thousand zigzags), so it is drawn 1 px
                # wide in an opaque colour pre-blended with the background.
                faint = _blend(TRAIN_COLOR, base, 0.3)
                p.setRenderHint(QPainter.RenderHint.Antialiasing, False)
                drawn += self._polyline(p, dx, dy, to_px, QPen(faint, 1))
                p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
                sx, sy = downsample(tr.xs, tr.smoothed, buckets, "mean")
                drawn += self._polyline(p, sx, sy, to_px, QPen(TRAIN_COLOR, 1), bold=True)
            else:
                drawn += self._polyline(p, dx, dy, to_px, QPen(TRAIN_COLOR, 1))
        va = self.valid
        if len(va):
            vx, vy = downsample(va.xs, va.ys, buckets, "mean")
            drawn += self._polyline(p, vx, vy, to_px, QPen(VALID_COLOR, 1), bold=True)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(VALID_COLOR)
            if len(vx) <= 200:
                for x, y in zip(vx, vy):
                    p.drawEllipse(to_px(x, y), 3.2, 3.2)
        self.points_drawn = drawn

        # legend
        lx = rect.right() - 150
        for i, (label, color) in enumerate((("train", TRAIN_COLOR), ("validation", VALID_COLOR))):
            ly = rect.top() + 6 + i * 16
            p.setPen(QPen(color, 2.5))
            p.drawLine(QPointF(lx, ly + 6), QPointF(lx + 18, ly + 6))
            p.setPen(text)
            p.drawText(QRectF(lx + 24, ly - 2, 120, 16), Qt.AlignmentFlag.AlignVCenter, label)

        if self._hover_x is not None:
            self._draw_hover(p, rect, to_px, x0, x1, text, base)
        p.end()

    def _polyline(self, p: QPainter, xs, ys, to_px, pen: QPen, bold: bool = False) -> int:
        if not xs:
            return 0
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        poly = QPolygonF([to_px(x, y) for x, y in zip(xs, ys)])
        p.drawPolyline(poly)
        if bold:
            # Pens wider than 1 px leave Qt's fast path: a jagged 2 px polyline can take 100 ms
            # to stroke. Two 1 px lines, half a pixel apart, look bold and cost ~2 ms.
            poly.translate(0.0, 0.8)
            p.drawPolyline(poly)
            poly.translate(0.6, -0.8)
            p.drawPolyline(poly)
        return len(xs)

    def readout(self, step: float) -> str:
        """The hover text for the point nearest to `step`."""
        parts = []
        xs, ys = self.train.xs, self.train.ys
        if xs:
            i = _nearest(xs, step)
            smooth = self.train.smoothed[i]
            parts.append(
                f"step {xs[i]:.0f}  train {ys[i]:.4f}"
                + (f" (smoothed {smooth:.4f})" if self.smoothing > 0 else "")
            )
        vx, vy = self.valid.xs, self.valid.ys
        if vx:
            j = _nearest(vx, step)
            parts.append(f"validation {vy[j]:.4f} at step {vx[j]:.0f}")
        return "   ".join(parts)

    def _draw_hover(self, p, rect, to_px, x0, x1, text, base) -> None:
        step = self._hover_x
        px = rect.left() + (step - x0) / (x1 - x0) * rect.width()
        line = QColor(text)
        line.setAlpha(90)
        p.setPen(QPen(line, 1, Qt.PenStyle.DashLine))
        p.drawLine(QPointF(px, rect.top()), QPointF(px, rect.bottom()))
        label = self.readout(step)
        fm = p.fontMetrics()
        w = fm.horizontalAdvance(label) + 14
        box = QRectF(
            min(max(rect.left(), px + 8), rect.right() - w), rect.top() + 2, w, fm.height() + 8
        )
        bg = QColor(base)
        bg.setAlpha(235)
        p.setPen(QPen(line, 1))
        p.setBrush(bg)
        p.drawRoundedRect(box, 5, 5)
        p.setPen(text)
        p.drawText(box, Qt.AlignmentFlag.AlignCenter, label)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802 - Qt API
        if not self.point_count:
            return
        rect = self._plot_rect()
        x0, x1, _, _ = self._ranges()
        fx = (event.position().x() - rect.left()) / rect.width()
        self._hover_x = x0 + min(1.0, max(0.0, fx)) * (x1 - x0)
        self.sig_hover.emit(self.readout(self._hover_x))
        self.update()

    def leaveEvent(self, _event) -> None:  # noqa: N802 - Qt API
        self._hover_x = None
        self.update()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round grid values (steps of 1, 2 or 5 times a power of ten) that span
    [lo, hi]; never below zero when the data is not (a loss cannot be negative)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    start = math.floor(lo / step + 1e-9) * step
    if lo >= 0:
        start = max(0.0, start)
    end = math.ceil(hi / step - 1e-9) * step
    n = int(round((end - start) / step))
    return [round(start + i * step, 12) for i in range(n + 1)]


def tick_label(value: float, ticks: list[float]) -> str:
    """A tick value with as few decimals as shows every tick exactly (0.25 but 2, not 2.00)."""
    for decimals in range(7):
        if all(abs(round(t, decimals) - t) < 1e-9 for t in ticks):
            break
    return f"{value:.{decimals}f}"


def _blend(fg: QColor, bg: QColor, amount: float) -> QColor:
    """fg at `amount` opacity over bg, as an opaque colour."""
    return QColor(
        int(fg.red() * amount + bg.red() * (1 - amount)),
        int(fg.green() * amount + bg.green() * (1 - amount)),
        int(fg.blue() * amount + bg.blue() * (1 - amount)),
    )


def _nearest(xs: list[float], x: float) -> int:
    """Index of the value nearest to x in an increasing list."""
    import bisect

    i = bisect.bisect_left(xs, x)
    if i <= 0:
        return 0
    if i >= len(xs):
        return len(xs) - 1
    return i if xs[i] - x < x - xs[i - 1] else i - 1


class LossChartPanelWidget(QWidget):
    """The chart with its controls: smoothing slider and log-scale toggle."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.chart = LossChartWidget(self)
        self.smoothing = QSlider(Qt.Orientation.Horizontal)
        self.smoothing.setRange(0, 95)
        self.smoothing.setValue(60)
        self.smoothing.setFixedWidth(120)
        self.smoothing.setToolTip("Smoothing of the training curve (exponential moving average).")
        self.smoothing.valueChanged.connect(lambda v: self.chart.set_smoothing(v / 100))
        self.log_scale = QCheckBox("Log scale")
        self.log_scale.toggled.connect(self.chart.set_log_scale)
        controls = QHBoxLayout()
        controls.setContentsMargins(0, 0, 0, 0)
        title = QLabel("Loss")
        title.setObjectName("sectionTitle")
        controls.addWidget(title)
        controls.addStretch(1)
        controls.addWidget(QLabel("Smoothing"))
        controls.addWidget(self.smoothing)
        controls.addSpacing(12)
        controls.addWidget(self.log_scale)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(controls)
        layout.addWidget(self.chart, 1)

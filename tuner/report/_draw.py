"""Drawing a :class:`~tuner.report._charts.Chart` twice: with plotly for the HTML, with
matplotlib for the PNG.

PNG files come from matplotlib, not from plotly's image export: that needs kaleido and
a Chrome it drives (downloaded on first use, or a system one), which a clean, offline
install does not have. matplotlib renders anywhere with no browser.
"""

from __future__ import annotations

from typing import Any

from tuner.report._charts import Chart


def to_plotly(chart: Chart) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for s in chart.series:
        if chart.kind == "bar":
            fig.add_trace(go.Bar(x=list(s.y), y=list(s.x), orientation="h", name=s.label))
        elif chart.kind == "box":
            fig.add_trace(go.Box(y=list(s.y), name=s.label, boxpoints="all", jitter=0.4))
        elif chart.kind == "lines":
            fig.add_trace(go.Scatter(x=list(s.x), y=list(s.y), name=s.label, mode="lines",
                                     line={"dash": "dash" if s.dashed else "solid"},
                                     opacity=0.6 if s.dashed else 1.0))
        else:
            fig.add_trace(go.Scatter(x=list(s.x), y=list(s.y), name=s.label, mode="markers",
                                     opacity=0.7))
    fig.update_layout(title=chart.title, xaxis_title=chart.x_label,
                      yaxis_title=chart.y_label, template="plotly_white")
    if chart.log_x:
        fig.update_xaxes(type="log")
    return fig


def to_matplotlib(chart: Chart) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    if chart.kind == "box":
        ax.boxplot([list(s.y) for s in chart.series])
        ax.set_xticks(range(1, len(chart.series) + 1), [s.label for s in chart.series])
    for s in chart.series:
        if chart.kind == "bar":
            ax.barh(list(s.x), list(s.y))
        elif chart.kind == "lines":
            ax.plot(s.x, s.y, label=s.label, linestyle="--" if s.dashed else "-",
                    alpha=0.6 if s.dashed else 1.0)
        elif chart.kind == "scatter":
            ax.scatter(s.x, s.y, label=s.label, alpha=0.7, s=14)
    if chart.kind in ("lines", "scatter"):
        ax.legend(fontsize="small")
    if chart.log_x:
        ax.set_xscale("log")
    ax.set_title(chart.title)
    ax.set_xlabel(chart.x_label)
    ax.set_ylabel(chart.y_label)
    return fig

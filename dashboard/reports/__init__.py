"""Reports: performance analytics, backtest baselines, the weekly report as a page, a CSV and an
e-mail, and the charts of both."""

"""The capacity-review report of `planner recommend --report DIR`: plots (matplotlib, Agg) and one HTML file.

Imported only when a report is asked for: matplotlib costs about a second to import, and the plain
recommendation must stay quick.
"""

"""Looking at a dataset: the pair viewer, the image viewer and the static HTML report.

`drawing` holds the pure drawing primitives (colours, markers, overlays, PNG bytes),
`pair_view` and `image_view` turn a store (or an SPair-layout export) into drawings, and
`report` gathers a dataset's state into one offline HTML page from Jinja2 templates.
"""

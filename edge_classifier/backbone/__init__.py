"""The backbone: the TFLite runtime, the model manifest and its fetcher, graph rewriting, and
:class:`~edge_classifier.backbone.model.Backbone`, which turns a frame into an embedding."""

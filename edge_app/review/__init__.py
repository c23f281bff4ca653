"""The review side of LeukEdge: the review web page (`edge-app serve`), reviewer accounts,
per-sample reports and the sample export. Flask and fpdf2, no TensorFlow."""

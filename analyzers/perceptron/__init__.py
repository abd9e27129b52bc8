"""The solvable model's analysis: replica theory of the teacher-student perceptron, and its fits."""
